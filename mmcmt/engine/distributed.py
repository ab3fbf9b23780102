"""Distributed runs (``--launcher pytorch``) on machines without CUDA."""
from mmengine.config import Config


def setup_cpu_distributed(cfg: Config) -> None:
    """Make ``--launcher pytorch`` work on machines without CUDA (gloo).

    mmengine's launcher assumes GPUs: it calls ``torch.cuda.set_device`` and
    wraps the model in DDP with ``device_ids``. Without CUDA, the process
    group is started here on gloo (so mmengine does not start its own) and
    the model is wrapped for CPU. SyncBatchNorms (``sync_bn`` in the
    configs, ``norm_cfg=dict(type='SyncBN')`` in mmseg's heads) normalise
    across the processes as on GPUs: torch's module refuses CPU tensors, so
    they compute :func:`~mmcmt.models.utils.batch_norm.sync_batch_norm`.
    """
    import torch
    import torch.distributed as dist
    if cfg.launcher == 'none' or torch.cuda.is_available():
        return
    if not dist.is_initialized():
        dist.init_process_group('gloo')
    cfg.model_wrapper_cfg = dict(type='CPUDistributedDataParallel')


def _register_cpu_ddp():
    import torch
    from mmengine.model import MMDistributedDataParallel
    from mmengine.registry import MODEL_WRAPPERS

    @MODEL_WRAPPERS.register_module(force=True)
    class CPUDistributedDataParallel(MMDistributedDataParallel):
        """mmengine's DDP wrapper for a model on the CPU (no device ids)."""

        def __init__(self, module, device_ids=None, **kwargs):
            import torch.distributed as dist
            from mmengine.logging import print_log

            from .sync_batch_norm import install_sync_batch_norm_on_cpu
            kwargs.setdefault('broadcast_buffers', False)
            norms = sum(
                isinstance(m, torch.nn.SyncBatchNorm)
                for m in module.modules())
            if norms:
                install_sync_batch_norm_on_cpu()
                print_log(
                    f'{norms} SyncBatchNorm layers normalise across the '
                    f'{dist.get_world_size()} CPU processes (gloo)', 'current')
            super().__init__(module=module, device_ids=None, **kwargs)

        def _passing_sync_batchnorm_handle(self, module):
            """DDP refuses SyncBatchNorm layers in CPU modules (torch's own
            kernels need GPUs); here they compute mmcmt's function."""

    return CPUDistributedDataParallel


CPUDistributedDataParallel = _register_cpu_ddp()
