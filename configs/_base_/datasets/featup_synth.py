# The project's generated dataset (featup_plugin.data.synthetic): 10 classes with thin structures, small
# objects and textured regions, 128x128 PNGs in mmseg's layout. tools/train.py and tools/test.py generate it
# from `synthetic_data` when data_root is missing (or: python3 tools/dataset_converters/generate_dataset.py --out data/featup_synth).
dataset_type = 'FeatUpSyntheticDataset'
data_root = 'data/featup_synth'
synthetic_data = dict(root=data_root, num_train=200, num_val=50, size=128, seed=0)
num_classes = 10
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            [
                dict(type='RandomFlip', prob=0.0, direction='horizontal'),
                dict(type='RandomFlip', prob=1.0, direction='horizontal'),
            ],
            [dict(type='LoadAnnotations')],
            [dict(type='PackSegInputs')],
        ],
    ),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train'),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='img_dir/val', seg_map_path='ann_dir/val'),
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
# mIoU, next to it thin_iou (mean IoU of wire, pole, vine) and small_iou (pebble, marker), then the boundary F-score
val_evaluator = [
    dict(
        type='GroupIoUMetric',
        iou_metrics=['mIoU'],
        class_groups=dict(thin=['wire', 'pole', 'vine'], small=['pebble', 'marker']),
    ),
    dict(type='BoundaryFScore', tolerance=2),
]
test_evaluator = val_evaluator
