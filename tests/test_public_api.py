"""The curated public API: ``tffprod.__all__`` lists exactly what users import."""

import subprocess
import sys

import tffprod


def test_all_names_exist_and_are_public():
    assert sorted(tffprod.__all__) == tffprod.__all__
    for name in tffprod.__all__:
        assert hasattr(tffprod, name), name


def test_no_unlisted_public_members():
    public = {n for n in dir(tffprod) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(tffprod, n)).__name__ == "module"}
    assert public - modules == set(tffprod.__all__)


def test_import_is_cheap():
    code = "import sys, tffprod; print(sorted(m for m in sys.modules if m.split('.')[0] in {'tensorflow', 'tensorflow_federated', 'sqlite_utils', 'dp_accounting'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
