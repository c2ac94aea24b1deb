#!/usr/bin/env python3
"""Train and evaluate detectron2 models with FeatUp (``featup_plugin.detectron2``), in detectron2's style.

    python3 tools/train_net_d2.py --config-file configs/detectron2/semantic_fpn_R18_featup_synth.yaml
    python3 tools/train_net_d2.py --config-file configs/detectron2/semantic_fpn_R18_featup_synth.py  # LazyConfig
    python3 tools/train_net_d2.py --config-file CFG --eval-only MODEL.WEIGHTS work_dirs/.../model_final.pth
    python3 tools/train_net_d2.py --config-file CFG --num-gpus 8 MODEL.DEVICE cuda

A ``.yaml`` config goes through ``get_cfg()`` + ``add_featup_config()`` and a :class:`DefaultTrainer` whose
evaluator follows the test set's ``evaluator_type`` (``sem_seg`` -> ``SemSegEvaluator``, ``coco`` ->
``COCOEvaluator``); a ``.py`` LazyConfig is trained with ``SimpleTrainer`` / ``AMPTrainer`` and evaluated with
``dataloader.evaluator``. Trailing ``KEY VALUE`` pairs (yaml) or ``key=value`` (LazyConfig) override the config.
The generated dataset (``featup_synth_*``) is created on first use. A config that asks for CUDA on a machine
without a GPU runs on the CPU, with a warning.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict

import detectron2.utils.comm as comm
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.data import MetadataCatalog
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    create_ddp_model,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
    launch,
)
from detectron2.evaluation import (
    COCOEvaluator,
    DatasetEvaluators,
    inference_on_dataset,
    print_csv_format,
    verify_results,
)
from detectron2.utils.events import TensorboardXWriter

import featup_plugin.detectron2  # noqa: F401  (registers FeatUpBackbone and the generated dataset)
from featup_plugin.detectron2 import SemSegEvaluator, add_featup_config

logger = logging.getLogger('featup_plugin.train_net_d2')


def _tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _writers(output_dir: str, max_iter: int):
    """detectron2's default writers, without TensorBoard where the tensorboard package is missing."""
    writers = default_writers(output_dir, max_iter)
    if not _tensorboard_available():
        writers = [w for w in writers if not isinstance(w, TensorboardXWriter)]
    return writers


def _device(requested: str) -> str:
    if str(requested).startswith('cuda') and not torch.cuda.is_available():
        logger.warning('the config asks for %s but no GPU is visible: running on the CPU', requested)
        return 'cpu'
    return str(requested)


def build_evaluator(cfg, dataset_name: str, output_folder: str | None = None):
    """The evaluator of a dataset, from its metadata's ``evaluator_type``."""
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, 'inference')
    evaluator_type = MetadataCatalog.get(dataset_name).get('evaluator_type', None)
    evaluators = []
    if evaluator_type in ('sem_seg', 'coco_panoptic_seg'):
        evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
    if evaluator_type in ('coco', 'coco_panoptic_seg', 'lvis'):
        evaluators.append(COCOEvaluator(dataset_name, output_dir=output_folder))
    if not evaluators:
        raise NotImplementedError(f'no evaluator for dataset {dataset_name!r} (evaluator_type={evaluator_type!r})')
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with evaluators picked from the dataset metadata."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    def build_writers(self):
        return _writers(self.cfg.OUTPUT_DIR, self.max_iter)


# -- yacs (.yaml) configs -------------------------------------------------------------------------------------
def setup(args):
    cfg = get_cfg()
    add_featup_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    cfg.MODEL.DEVICE = _device(cfg.MODEL.DEVICE)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main_yaml(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    res = trainer.train()
    # DefaultTrainer.train() returns the results only with TEST.EXPECTED_RESULTS; its EvalHook keeps the last ones
    return res if res is not None else getattr(trainer, '_last_eval_results', None)


# -- LazyConfig (.py) configs ---------------------------------------------------------------------------------
def do_test_lazy(cfg, model):
    if 'evaluator' not in cfg.dataloader:
        return {}
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    if comm.is_main_process() and results:
        print_csv_format(results)
    return results


def do_train_lazy(args, cfg):
    model = instantiate(cfg.model).to(cfg.train.device)
    logger.info('Model:\n%s', model)
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optim)
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    last_eval = {}

    def test_and_save():
        last_eval.clear()
        last_eval.update(do_test_lazy(cfg, model))
        return last_eval

    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
            hooks.EvalHook(cfg.train.eval_period, test_and_save),
            hooks.PeriodicWriter(_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period)
            if comm.is_main_process()
            else None,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return OrderedDict(last_eval)


def main_lazy(args):
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts or [])
    cfg.train.device = _device(cfg.train.get('device', 'cuda'))
    default_setup(cfg, args)
    if args.eval_only:
        model = instantiate(cfg.model).to(cfg.train.device)
        DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
        return do_test_lazy(cfg, model)
    return do_train_lazy(args, cfg)


def main(args):
    if args.config_file.endswith('.py'):
        return main_lazy(args)
    return main_yaml(args)


def parse_args(argv=None):
    return default_argument_parser(epilog=__doc__).parse_args(argv)


if __name__ == '__main__':
    args = parse_args()
    print('Command Line Args:', args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
