from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
version = next(line.split('"')[1] for line in (HERE / "plabel_kit" / "__init__.py").read_text().splitlines()
               if line.startswith("__version__"))

# Built-in plugins live in plugins/<package>/ and register through the same
# entry-point group, ``plabel_kit``, that a third-party package uses.
builtin_plugins = find_packages("plugins")
plugin_entry_points = [f"{pkg.removeprefix('plabel_')} = {pkg}" for pkg in builtin_plugins if "." not in pkg]

setup(
    name="plabel-kit",
    version=version,
    description="Pseudo labels for weakly supervised semantic segmentation: sources, refiners, "
                "ensembles, MMSegmentation training and evaluation",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["plabel_kit", "plabel_kit.*"]) + builtin_plugins,
    package_dir={pkg: f"plugins/{pkg.replace('.', '/')}" for pkg in builtin_plugins},
    install_requires=[
        "numpy", "pillow", "click>=8.1", "pluggy>=1.3", "rich", "scipy",
        "opencv-python-headless",
    ],
    extras_require={
        # torch first and pinned by the Makefile: an unpinned torch pulls CUDA wheels
        "train": ["torch", "mmengine==0.10.7", "mmsegmentation==1.2.2", "mmcv==2.1.0"],
        "crf": ["pydensecrf2"],
        "test": ["pytest", "hypothesis"],
    },
    entry_points={
        "console_scripts": ["plabel = plabel_kit.cli:main"],
        "plabel_kit": plugin_entry_points,
    },
)
