"""Distributed runs (``--launcher pytorch``) on machines without CUDA."""
from mmengine.config import Config


def setup_cpu_distributed(cfg: Config) -> None:
    """Make ``--launcher pytorch`` work on machines without CUDA (gloo).

    mmengine's launcher assumes GPUs: it calls ``torch.cuda.set_device`` and
    wraps the model in DDP with ``device_ids``. Without CUDA, the process
    group is started here on gloo (so mmengine does not start its own), the
    model is wrapped for CPU, and ``sync_bn`` is dropped with a warning
    (torch's SyncBatchNorm runs on GPUs only); SyncBN layers that the config
    builds itself (``norm_cfg=dict(type='SyncBN')`` in mmseg's heads) are
    turned back into BatchNorms by the wrapper.
    """
    import torch
    import torch.distributed as dist
    from mmengine.logging import print_log
    if cfg.launcher == 'none' or torch.cuda.is_available():
        return
    if not dist.is_initialized():
        dist.init_process_group('gloo')
    cfg.model_wrapper_cfg = dict(type='CPUDistributedDataParallel')
    if cfg.get('sync_bn'):
        print_log(
            'sync_bn ignored: SyncBatchNorm needs GPUs; each CPU '
            'process normalises with its own batch',
            'current',
            level=30)
        cfg.sync_bn = None


def _register_cpu_ddp():
    import torch
    from mmengine.model import MMDistributedDataParallel
    from mmengine.registry import MODEL_WRAPPERS

    @MODEL_WRAPPERS.register_module(force=True)
    class CPUDistributedDataParallel(MMDistributedDataParallel):
        """mmengine's DDP wrapper for a model on the CPU (no device ids)."""

        def __init__(self, module, device_ids=None, **kwargs):
            from mmengine.logging import print_log
            from mmengine.model import revert_sync_batchnorm
            kwargs.setdefault('broadcast_buffers', False)
            if any(
                    isinstance(m, torch.nn.SyncBatchNorm)
                    for m in module.modules()):
                print_log(
                    'SyncBN layers of the model run as BatchNorm: '
                    'SyncBatchNorm needs GPUs',
                    'current',
                    level=30)
                module = revert_sync_batchnorm(module)
            super().__init__(module=module, device_ids=None, **kwargs)

    return CPUDistributedDataParallel


CPUDistributedDataParallel = _register_cpu_ddp()
