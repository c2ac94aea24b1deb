# FeatUp's JBU upsampler training schedule: NAdam lr 1e-3, constant; the total gradient norm clipped to 1e-4 for the
# first 10 iterations (EarlyGradClipHook); iteration-based; no validation loop.
max_iters = 2000
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='NAdam', lr=1e-3))
param_scheduler = None
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)
val_cfg = val_dataloader = val_evaluator = None
test_cfg = test_dataloader = test_evaluator = None
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=500, max_keep_ckpts=2, save_last=True),
    sampler_seed=dict(type='DistSamplerSeedHook'),
)
custom_hooks = [dict(type='EarlyGradClipHook', max_norm=1e-4, steps=10)]
randomness = dict(seed=0)
