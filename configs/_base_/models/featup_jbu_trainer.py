# FeatUp's JBU upsampler training (FeatUpJBUTrainer) with FeatUp's defaults: 5 jittered views per step (reflect
# pad <= 20 px, zoom <= 2), the upsampler run once per view, attention downsampler (saliency dropout 0.2),
# adaptive-uncertainty loss (scale head init x0.1, clamped at 1e-4) on 30-dim random projections (one per image and
# view), CRF loss 0.001 on the first view, no TV, no filter entropy; radius 3, key_dim 32; batch 4 of 224 px images
# from any folder. Every value with FeatUp's: docs/training.md#featups-hyper-parameters. A config that inherits it
# adds the frozen backbone, feat_dim, num_stages and downsampler_kernel (the backbone's stride), and the folder.
model = dict(
    type='FeatUpJBUTrainer',
    data_preprocessor=dict(type='BaseDataPreprocessor'),
    in_index=0,
    radius=3,
    key_dim=32,
    downsampler='attention',
    n_views=5,
    max_pad=20,
    max_zoom=2.0,
    proj_dim=30,
    crf_weight=0.001,
    crf_guidance='image',  # FeatUp's (misaligned) pairing; 'view' aligns it: docs/training.md#multi-view-loss
    tv_weight=0.0,
    filter_ent_weight=0.0,
    upsample_per_view=True,
    uncertainty=True,
    seed=0,
)
train_dataloader = dict(
    batch_size=4,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='ImageFolderDataset', root='data/images', size=224),
)
