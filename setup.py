from setuptools import find_packages, setup


def read_requirements(path='requirements.txt'):
    with open(path) as f:
        return [
            line.strip() for line in f
            if line.strip() and not line.startswith('#')
        ]


def read_version(path='mmcmt/version.py'):
    scope = {}
    with open(path) as f:
        exec(f.read(), scope)
    return scope['__version__']


setup(
    name='mmcmt',
    version=read_version(),
    description='CMT (CNNs Meet Transformers) backbones for MMDetection and '
    'MMSegmentation',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmcmt', 'mmcmt.*']),
    # data files inside the packages (not found by find_packages)
    package_data={'mmcmt.benchmark': ['goals.yml']},
    python_requires='>=3.8',  # 3.8 and 3.12 tested (tools/stacks.txt)
    install_requires=read_requirements(),
    extras_require={
        'export': ['onnx', 'onnxruntime'],
        'tests': ['pytest'],
    },
    license='Apache-2.0',
)
