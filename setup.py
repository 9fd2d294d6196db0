"""diffgen_jax: train diffusion denoisers in JAX/Flax and measure how they memorize."""

from setuptools import find_packages, setup

setup(
    name="diffgen_jax",
    version="0.1.0",
    description="Diffusion denoisers and the empirical optimal denoiser: where and how much they memorize.",
    python_requires=">=3.11",
    packages=find_packages(include=["diffgen_jax", "diffgen_jax.*"]),
    include_package_data=True,
    install_requires=[
        "jax==0.10.2",
        "jaxlib==0.10.2",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "tensorflow-datasets==4.9.10",
        "importlib_resources==7.1.0",  # needed by tfds 4.9.10, not declared by it
        "array_record==0.8.6",
        "ml-collections==1.1.0",
        "absl-py==2.5.1",
        "numpy>=2.0,<3",
        "scipy>=1.13",
        "matplotlib==3.11.2",
        "scikit-learn==1.9.1",
        "tensorboardX==2.6.5",  # TensorBoard event files without TensorFlow
        "grain==0.2.18",  # the input pipeline: the batch stream
    ],
    extras_require={
        "test": ["pytest==9.0.3", "pytest-xdist==3.8.0", "hypothesis==6.155.2"],
    },
)
