"""Installable package for resnest_gluon (ResNeSt training framework in MXNet Gluon)."""
from setuptools import find_packages, setup

setup(
    name="resnest_gluon",
    version="0.1.0",
    description="ResNeSt (Split-Attention Networks) training, evaluation and export in MXNet Gluon",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.8",
    packages=find_packages(include=["resnest_gluon", "resnest_gluon.*",
                                    "recordio_tools", "recordio_tools.*"]),
    # compiled on first use (resnest_gluon/native.py): the split-attention operator against
    # the installed MXNet, the evaluation transform's resampler
    package_data={"resnest_gluon.models": ["csrc/*.cc", "csrc/*.h"],
                  "resnest_gluon.data": ["csrc/*.cc"]},
    install_requires=[
        # mxnet 1.9.1 breaks with numpy >= 1.24 (np.bool, np.PZERO were removed).
        "numpy==1.23.5",
        "mxnet==1.9.1",
        "PyYAML>=5.4",
        "tqdm>=4.50",
        "Pillow>=9.0",
        "opencv-python<4.9",
        "matplotlib<3.9",
        "safetensors>=0.4",
        # oneDNN 2.6's library and headers for the compiled Winograd convolution (CPUs)
        'onednn-cpu-gomp==2022.2.1; platform_machine == "x86_64"',
        'onednn-devel-cpu-gomp==2022.2.1; platform_machine == "x86_64"',
    ],
    extras_require={
        # The CUDA build replaces the CPU one: pip install resnest_gluon[cu112] then
        # pip uninstall mxnet (both provide the `mxnet` module).
        "cu112": ["mxnet-cu112==1.9.1"],
        "onnx": ["onnx==1.15.0", "onnxruntime==1.19.2", "protobuf>=4.21"],
        "dist": ["horovod==0.28.1"],
        "dev": ["gluoncv==0.10.5.post0", "scikit-learn==1.3.2", "scipy<1.12", "pandas<2.2",
                "pytest>=7", "pytest-timeout", "ruff==0.17.6", "onnx==1.15.0",
                "onnxruntime==1.19.2"],
    },
    entry_points={
        "console_scripts": [
            "resnest-summary=resnest_gluon.commands.summary:main",
            "resnest-train=resnest_gluon.commands.train:main",
            "resnest-verify=resnest_gluon.commands.verify:main",
            "resnest-export=resnest_gluon.commands.export:main",
            "resnest-convert=resnest_gluon.commands.convert:main",
            "resnest-predict=resnest_gluon.commands.predict:main",
            "resnest-bench-data=resnest_gluon.commands.bench_data:main",
            "resnest-ablation=resnest_gluon.commands.ablation:main",
            "resnest-scaling=resnest_gluon.commands.scaling:main",
            "resnest-launch=resnest_gluon.commands.launch:main",
            "resnest-bench-allreduce=resnest_gluon.commands.bench_allreduce:main",
            "recordio-tools=recordio_tools.__main__:main",
            "recordio-pack=recordio_tools.pack:main",
            "recordio-check=recordio_tools.check:main",
            "recordio-inspect=recordio_tools.inspect_shards:main",
        ],
    },
)
