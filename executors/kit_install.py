"""A site kit's ``install.sh`` and its systemd unit.

``install.sh`` installs the kit into a venv in the kit's own folder, in one command, on a Linux
machine with Python 3.11 and PyPI. It bootstraps uv (pinned, as the Makefile does, and checked
against its wheels' hashes) into a small venv of its own (``.uv/``), makes the site's venv
(``venv/``) and installs the kit's ``requirements.txt`` with ``--require-hashes`` and
``--override overrides.txt`` (the lock's requirements and the tffprod wheel, every file checked
against its hash), compiling bytecode so the site starts fast. It is idempotent: a second run
checks, reinstalls only the kit's own wheel, and changes nothing else. It makes ``state/`` and
writes the systemd unit for the folder it is in.

The unit runs ``tffprod site serve`` from the venv as a dedicated user. systemd sends SIGTERM to
``site serve`` only (``KillMode=mixed``): the site stops its gateway and its worker itself, and
whatever is left when ``TimeoutStopSec`` runs out is killed.
"""

from __future__ import annotations

UV_VERSION = "0.13.9"  # the uv the Makefile installs too (``python3 executors/kit_install.py``)
# The sha256 of UV_VERSION's Linux wheels as PyPI lists them (https://pypi.org/simple/uv/). install.sh
# installs uv with --require-hashes too: a file changed on the index, a mirror or a proxy is refused.
UV_LINUX_WHEEL_SHA256 = (
    "d7f459fe4fd247d830351c75686d3996ace3c6f3f728eb0e85a30b7ada0cef19",  # manylinux_2_17 x86_64
    "2c45530751517d6c3bbc69a19473f6effe47cce047bede01ffd8af7ea7b36b25",  # musllinux_1_1 x86_64
    "5435c5ce14a56431208ca0996416d310f1598e8c2c8ba707688985a16bb82dbe",  # manylinux_2_17 aarch64, musllinux
    "ecb6028d79dc96fbeafffe5c8af62a7099487ebc05a701e76714eebcffd06375",  # manylinux_2_28 aarch64
    "16963d19594e18d746a70c7fce82237bde4f2cac4cfcf0ca2b84796fe9d0c6e9",  # manylinux_2_17 armv7l
    "7ec1e1dd9b6cb335c301afdf877989df384227313981850755a59561f75e4ab8",  # manylinux_2_17 armv7l, musllinux
    "db5c8df7145c21ffea9c0f74e38823bac3af60cbadf0e26b8633f08627b17bab",  # manylinux_2_17 i686
    "a2ee66fe8b6608e1482ab1bde5799da04705c1cb40324c7f66054ecf46ae6e40",  # musllinux_1_1 i686
    "c5dbdb7c8737cd183a9dce95b39cfd1f3d54ec2a27a1bb58f160293f9ba2c805",  # manylinux_2_17 ppc64le
    "a6e845f387e4ed55bb59342957a9179e24a631fcc7668bda3426ae1cef8ed4b9",  # manylinux_2_17 s390x
    "6b0c7b9f47a5d011939d61e324d3fe18a8bc155d8dd53add738709a92f290a7c",  # manylinux_2_31 riscv64
    "6d5114bba238adddacb32fb11904f2b3ff4e988f8e9ff0d8d3b5e9822cf836b8",  # manylinux_2_31 riscv64, musllinux
    "56ec37616c00220032fc7b8c9d0ef51367fd0d70d9cd6ddd841660f949f84fed",  # linux armv6l
)
DEFAULT_PREFIX = "/opt"  # where the kit's README suggests the kit goes; the unit in the kit names it
# ``site serve`` on SIGTERM: calls in flight get executors.serve.STOP_GRACE_S (5 s), then the worker gets
# SIGTERM and 10 s (WorkerProcess.stop) before SIGKILL. systemd waits longer than both.
TIMEOUT_STOP_S = 30

_UNIT = """\
# tffprod site @SITE@: its gateway and supervised TFF worker (written by install.sh for this folder).
# Install (as root): cp @UNIT@ /etc/systemd/system/ && systemctl daemon-reload && systemctl enable --now @UNIT@
[Unit]
Description=tffprod site @SITE@ (federated learning gateway and TFF worker)
Documentation=file://@KIT@/README.txt
Wants=network-online.target
After=network-online.target
StartLimitIntervalSec=300
StartLimitBurst=5

[Service]
Type=simple
User=@USER@
Group=@USER@
WorkingDirectory=@KIT@
ExecStart=@KIT@/venv/bin/tffprod site serve --config @KIT@/site.toml
Environment=PYTHONUNBUFFERED=1
Restart=on-failure
RestartSec=10
# SIGTERM to site serve only: it stops its gateway (calls in flight get 5 s) and its worker (10 s, then SIGKILL)
# and logs "site @SITE@ stopped on SIGTERM; its worker is down". Anything left after TimeoutStopSec is killed.
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec=@TIMEOUT@
NoNewPrivileges=yes
PrivateTmp=yes
UMask=0077

[Install]
WantedBy=multi-user.target
"""

_INSTALL = """\
#!/usr/bin/env bash
# Installs tffprod for site @SITE@ from this kit into ./venv: one command, ./install.sh
# Needs Linux, Python 3.11 (python3.11 on PATH, or PYTHON=/path/to/python3.11) and PyPI (or its proxy).
# Idempotent: running it again repairs the venv (and reinstalls the kit's wheel) and changes nothing else.
set -euo pipefail

SITE=@SITE@
UV_VERSION=@UV_VERSION@
WHEEL=@WHEEL@
UNIT=@UNIT@

die() { echo "install.sh: error: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

[ "$(uname -s)" = Linux ] || die "the kit installs on Linux only, not on $(uname -s)"
KIT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
case "$KIT_DIR" in
    *[[:space:]%\\"\\\\\\$]*)
        die "the kit's folder '$KIT_DIR' holds a space or one of % \\" \\\\ \\$, which its systemd unit" \\
            "cannot name: move the kit (e.g. to @PREFIX@/tffprod-site-$SITE)" ;;
esac
cd "$KIT_DIR"
for file in site.toml requirements.txt overrides.txt "$WHEEL" "certs/$SITE.crt" "certs/$SITE.key" certs/ca.crt; do
    [ -f "$file" ] || die "the kit is incomplete: $KIT_DIR/$file is missing"
done

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 \\
    || die "no $PYTHON here: install Python 3.11 (e.g. apt-get install python3.11 python3.11-venv)" \\
           "or set PYTHON=/path/to/python3.11"
version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || die "$PYTHON does not run"
[ "$version" = 3.11 ] || die "$PYTHON is Python $version; the kit needs Python 3.11 (set PYTHON=/path/to/python3.11)"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null \\
    || die "$PYTHON cannot make virtual environments: install python3.11-venv"
PYTHON=$("$PYTHON" -c 'import sys; print(sys.executable)')
export UV_PYTHON_DOWNLOADS=never
unset VIRTUAL_ENV PYTHONPATH PYTHONHOME

# 1. uv, pinned, in a small venv of its own (from PyPI)
if [ "$(.uv/bin/uv --version 2>/dev/null | cut -d' ' -f2 || true)" != "$UV_VERSION" ]; then
    say "installing uv $UV_VERSION into $KIT_DIR/.uv"
    "$PYTHON" -m venv --clear .uv || die "cannot make a venv at $KIT_DIR/.uv with $PYTHON"
    cat > .uv/requirements.txt <<'UV_REQUIREMENTS'
@UV_REQUIREMENTS@
UV_REQUIREMENTS
    .uv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes --only-binary=:all: \\
        -r .uv/requirements.txt \\
        || die "cannot install uv $UV_VERSION from PyPI (no network? set HTTPS_PROXY, or PIP_INDEX_URL for a" \\
               "mirror; a hash that does not match is a changed file, not to be installed)"
fi
UV=.uv/bin/uv

# 2. the site's venv, Python 3.11 (made once; remade only if broken)
if ! venv/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
    say "making the site's venv at $KIT_DIR/venv"
    "$UV" venv --quiet --clear --python "$PYTHON" venv || die "cannot make a venv at $KIT_DIR/venv"
fi

# 3. tffprod and every dependency, each file checked against its hash; TFF's jax/jaxlib pin overridden
say "installing tffprod and its pinned dependencies into $KIT_DIR/venv (the first time takes a few minutes)"
"$UV" pip install --quiet --python venv/bin/python --require-hashes --override overrides.txt \\
    --reinstall-package tffprod --compile-bytecode -r requirements.txt \\
    || die "installing requirements.txt into $KIT_DIR/venv failed (uv's message is above)"
installed=$(venv/bin/tffprod --version 2>/dev/null) || die "venv/bin/tffprod does not run after the install"

# 4. the site's state folder, and its systemd unit for this folder
mkdir -p state
chmod 0700 state
cat > "$UNIT.tmp" <<EOF
@UNIT_TEXT@EOF
mv -f "$UNIT.tmp" "$UNIT"

say "site $SITE is installed: $installed in $KIT_DIR/venv"
if grep -q '^[^#]*FILL-IN' site.toml; then
    say "next: in $KIT_DIR/site.toml, set the values marked FILL-IN (the datasets this site serves); then"
else
    say "next:"
fi
say "  $KIT_DIR/venv/bin/tffprod site serve --config $KIT_DIR/site.toml     (or as a service: README.txt, step 3)"
"""


def unit_name(site: str) -> str:
    """``tffprod-site-NAME.service``."""
    return f"tffprod-site-{site}.service"


def kit_prefix(site: str) -> str:
    """Where the kit's README suggests the kit goes on the site's machine."""
    return f"{DEFAULT_PREFIX}/tffprod-site-{site}"


def systemd_unit(site: str, *, kit_dir: str, user: str) -> str:
    """The unit that runs site ``site`` from the kit at ``kit_dir`` as ``user``."""
    return _fill(_UNIT, SITE=site, KIT=kit_dir, USER=user, UNIT=unit_name(site), TIMEOUT=str(TIMEOUT_STOP_S))


def install_script(site: str, *, wheel: str, user: str) -> str:
    """``install.sh`` for site ``site`` whose kit holds ``wheel`` (a file name)."""
    unit = systemd_unit(site, kit_dir="${KIT_DIR}", user=user)
    plain = unit.replace("${KIT_DIR}", "")
    if any(c in plain for c in "$`\\"):  # the unit goes into an unquoted heredoc: only ${KIT_DIR} may expand
        raise ValueError("the systemd unit must not hold $, ` or \\")
    return _fill(_INSTALL, SITE=site, UV_VERSION=UV_VERSION, UV_REQUIREMENTS=uv_requirements(), WHEEL=wheel,
                 UNIT=unit_name(site), PREFIX=DEFAULT_PREFIX, UNIT_TEXT=unit)


def uv_requirements() -> str:
    """The requirements file install.sh installs uv from: the pinned version, with its Linux wheels' hashes."""
    return " \\\n".join([f"uv=={UV_VERSION}", *(f"    --hash=sha256:{h}" for h in UV_LINUX_WHEEL_SHA256)])


def _fill(template: str, **values: str) -> str:
    for key, value in values.items():
        template = template.replace(f"@{key}@", value)
    return template


if __name__ == "__main__":  # the Makefile bootstraps its own uv from the same requirements
    print(uv_requirements())
