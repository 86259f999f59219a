"""The shared environment re-pointed at a new clone: other clones' editable-install paths,
which pip leaves behind ahead of the new one, are removed, so the new clone's code imports."""
import os
import subprocess
import sys
import venv

from runs import ROOT

POINT = os.path.join(ROOT, "scripts", "point_env_at_clone.py")


def _clone(folder):
    """A folder laid out like a clone: a ``resnest_gluon`` package saying where it is."""
    (folder / "resnest_gluon").mkdir(parents=True)
    (folder / "resnest_gluon" / "__init__.py").write_text(f"WHERE = {str(folder)!r}\n")
    return str(folder)


def _environment(folder):
    """A new virtual environment in ``folder`` (no pip): its Python and its site-packages."""
    venv.EnvBuilder(with_pip=False).create(folder)
    python = str(folder / "bin" / "python")
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = subprocess.run([python, "-c", where], capture_output=True, text=True,
                          check=True).stdout.strip()
    return python, site


def test_other_clones_paths_go_and_the_new_clone_imports(tmp_path):
    python, site = _environment(tmp_path / "env")
    old, older, new = (_clone(tmp_path / name) for name in ("old", "older", "new"))
    unrelated = tmp_path / "other_project"
    unrelated.mkdir()
    gone = str(tmp_path / "deleted_clone")
    with open(os.path.join(site, "easy-install.pth"), "w") as pth:
        pth.write("\n".join([old, gone, str(unrelated), older, new]) + "\n")
    with open(os.path.join(site, "resnest-gluon.egg-link"), "w") as link:
        link.write(old + "\n.")

    done = subprocess.run([python, POINT, new], capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    with open(os.path.join(site, "easy-install.pth")) as pth:
        assert pth.read().split() == [str(unrelated), new]
    assert not os.path.exists(os.path.join(site, "resnest-gluon.egg-link"))
    imported = subprocess.run([python, "-c", "import resnest_gluon; print(resnest_gluon.WHERE)"],
                              capture_output=True, text=True, cwd="/", check=True,
                              env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert imported.stdout.strip() == new
    assert f"removed {old} from easy-install.pth" in done.stdout


def test_the_new_clones_own_egg_link_stays(tmp_path):
    python, site = _environment(tmp_path / "env")
    new = _clone(tmp_path / "new")
    with open(os.path.join(site, "resnest-gluon.egg-link"), "w") as link:
        link.write(new + "\n.")
    done = subprocess.run([python, POINT, new], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == ""
    assert os.path.exists(os.path.join(site, "resnest-gluon.egg-link"))


def test_a_missing_clone_folder_is_one_usage_line():
    done = subprocess.run([sys.executable, POINT, "/no/such/clone"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.strip().startswith("usage:")
