# FeatUp's JBU upsampler training schedule: NAdam lr 1e-3, constant; iteration-based; no validation loop.
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
randomness = dict(seed=0)
