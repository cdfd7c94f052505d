"""A site kit's ``install.sh`` and its systemd unit.

``install.sh`` installs the kit into a venv in the kit's own folder, in one command, on a Linux
machine with Python 3.11 and PyPI. It bootstraps uv (pinned, as the Makefile does) into a small
venv of its own (``.uv/``), makes the site's venv (``venv/``) and installs the kit's
``requirements.txt`` with ``--require-hashes`` and ``--override overrides.txt`` (the lock's
requirements and the tffprod wheel, every file checked against its hash), compiling bytecode so
the site starts fast. It is idempotent: a second run checks, reinstalls only the kit's own wheel,
and changes nothing else. It makes ``state/`` and writes the systemd unit for the folder it is in.

The unit runs ``tffprod site serve`` from the venv as a dedicated user. systemd sends SIGTERM to
``site serve`` only (``KillMode=mixed``): the site stops its gateway and its worker itself, and
whatever is left when ``TimeoutStopSec`` runs out is killed.
"""

from __future__ import annotations

UV_VERSION = "0.13.9"  # the uv the Makefile installs (tests/unit/test_site_kit.py keeps them in step)
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
    .uv/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION" \\
        || die "cannot install uv $UV_VERSION from PyPI (no network? set HTTPS_PROXY, or PIP_INDEX_URL for a mirror)"
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
    return _fill(_INSTALL, SITE=site, UV_VERSION=UV_VERSION, WHEEL=wheel, UNIT=unit_name(site),
                 PREFIX=DEFAULT_PREFIX, UNIT_TEXT=unit)


def _fill(template: str, **values: str) -> str:
    for key, value in values.items():
        template = template.replace(f"@{key}@", value)
    return template
