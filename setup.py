from setuptools import find_packages, setup

setup(
    name="opensora-timeshift-patch",
    version="0.1.0",
    description="Frame-aware timestep-shift policies and samplers for Open-Sora's rectified-flow scheduler",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # Only the plugin: standin/ (the stand-in model and data, the stubs) serves the scripts and tests here.
    packages=find_packages(include=["opensora_timeshift_patch", "opensora_timeshift_patch.*"]),
    package_data={"opensora_timeshift_patch": ["py.typed"]},
    python_requires=">=3.9",
    entry_points={"console_scripts": ["opensora-timeshift = opensora_timeshift_patch.cli:main"]},
    # Open-Sora itself is deliberately not a requirement: it is installed from its own checkout.
    install_requires=["torch>=2.2", "mmengine>=0.10.3", "numpy", "pandas>=2.0", "tqdm", "matplotlib>=3.5", "scipy>=1.7"],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "vermin>=1.5", "matplotlib>=3.5", "scipy>=1.7"],
        # ColossalAI pins torch <= 2.5.1 and pulls a large stack: keep it in an environment of its own.
        "colossalai": ["colossalai>=0.4.1,<0.6"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.9",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
