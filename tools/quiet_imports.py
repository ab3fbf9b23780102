"""Imported first by every mmcmt tool, before mmcmt and the OpenMMLab
packages: hides the deprecation warnings that installed packages print while
they are imported (mmengine, mmcv, mmdet and mmseg import setuptools'
``pkg_resources``, which warns four times), so that a tool's output starts
with the user's run. Only these third-party import-time messages are
filtered; every warning about the run itself is shown."""
import warnings

warnings.filterwarnings(
    'ignore',
    message='pkg_resources is deprecated as an API',
    category=UserWarning)
