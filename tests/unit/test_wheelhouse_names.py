"""scripts/wheelhouse.py reads each wheel's name and version from its file name with the standard library
only (so that `make demo` can build the wheelhouse before the venv holds anything but pip): it must read
them as `packaging` does, for every kind of name the locks bring."""

from __future__ import annotations

import pytest
from packaging.utils import parse_wheel_filename

from scripts.wheelhouse import wheel_name_and_version

NAMES = [
    "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
    "typing_extensions-4.16.0-py3-none-any.whl",
    "model_runtime-0.1.0+src.f0b128b573-py3-none-any.whl",
    "Jinja2-3.1.6-py3-none-any.whl",
    "zope.interface-7.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
    "supervisor-4.3.0-1-py2.py3-none-any.whl",  # with a build tag
    "pydantic_core-2.41.5-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
]


@pytest.mark.parametrize("filename", NAMES)
def test_names_and_versions_read_as_packaging_reads_them(filename: str) -> None:
    name, version, _, _ = parse_wheel_filename(filename)
    assert wheel_name_and_version(filename) == (str(name), str(version))


@pytest.mark.parametrize("filename", ["torch-2.13.0.tar.gz", "torch.whl", "torch-2.13.0-py3-none.whl"])
def test_what_is_not_a_wheel_is_refused(filename: str) -> None:
    with pytest.raises(ValueError, match="not a wheel"):
        wheel_name_and_version(filename)
