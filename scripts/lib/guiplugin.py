"""Build aggbatt's gui-v2 UI plugin: gui-v2/*.qml + *.js -> one JSON file gui-v2 loads.

The JSON is what gui-v2's plugin loader reads from /data/apps/enabled/<app>/gui-v2/<app>.json:
name, version, the gui-v2 versions it declares, translations (none), integrations (device-list
pages bound to the aggregate's ProductId) and `resource`, a Qt binary resource (.rcc, zlib
compressed, which the browser build of gui-v2 needs) in base64 holding the pages under
qrc:/<name>/.

Qt's `rcc` comes from PySide6 (the `gui` extra of pyproject.toml), found by `find_rcc`. The
sources get a fixed mtime first, so the same tree gives the same bytes.

Usage: python3 scripts/lib/guiplugin.py OUT.json [--version V]
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
SOURCES = REPO / "gui-v2"
NAME = "aggbatt"
# The first gui-v2 with the plugin loader (Venus OS v3.70); no upper bound, so a newer gui-v2
# keeps showing the pages (the loader enforces both bounds from gui-v2 1.3.9 on).
MIN_GUI_VERSION = "v1.2.13"
MAX_GUI_VERSION = ""
PAGES = (("PageAggbattPacks.qml", "Packs"), ("PageAggbattLimits.qml", "Limits and decisions"))
EPOCH = 1_700_000_000


class PluginError(Exception):
    pass


def product_id() -> str:
    """The aggregate's ProductId as gui-v2 writes it ("0x" + upper-case hex)."""
    text = (REPO / "src" / "aggbatt" / "daemon" / "paths.py").read_text(encoding="utf-8")
    match = re.search(r"(?m)^PRODUCT_ID = 0x([0-9A-Fa-f]+)$", text)
    if match is None:
        raise PluginError("src/aggbatt/daemon/paths.py has no PRODUCT_ID = 0x... line")
    return "0x" + match.group(1).upper()


def find_rcc() -> list[str] | None:
    """The rcc command: $AGGBATT_RCC, PySide6 of this Python, the repo's .venv-gui, or PATH."""
    chosen = os.environ.get("AGGBATT_RCC")
    if chosen:
        return [chosen] if Path(chosen).is_file() else None
    spec = importlib.util.find_spec("PySide6")
    if spec is not None and spec.origin is not None:
        rcc = Path(spec.origin).parent / "Qt" / "libexec" / "rcc"
        if rcc.is_file():
            return [str(rcc)]
    for candidate in (REPO / ".venv-gui" / "bin" / "pyside6-rcc", shutil.which("pyside6-rcc"),
                      shutil.which("rcc")):
        if candidate is not None and Path(candidate).is_file():
            return [str(candidate)]
    return None


def compile_resource(rcc: list[str]) -> bytes:
    files = sorted(p for p in SOURCES.iterdir() if p.suffix in (".qml", ".js"))
    if not files:
        raise PluginError(f"no QML sources in {SOURCES}")
    with tempfile.TemporaryDirectory(prefix="aggbatt-gui-") as tmp:
        work = Path(tmp)
        entries = []
        for source in files:
            copy = work / source.name
            shutil.copyfile(source, copy)
            os.utime(copy, (EPOCH, EPOCH))
            entries.append(f"<file>{source.name}</file>")
        (work / f"{NAME}.qrc").write_text(
            f'<RCC>\n<qresource prefix="/{NAME}">\n' + "\n".join(entries) + "\n</qresource>\n</RCC>\n",
            encoding="utf-8")
        env = {**os.environ, "QT_RCC_SOURCE_DATE_OVERRIDE": str(EPOCH)}
        result = subprocess.run([*rcc, "--binary", "--compress-algo", "zlib", "--threshold", "0", "-o", f"{NAME}.rcc",
                                 f"{NAME}.qrc"], cwd=work, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise PluginError(f"rcc failed:\n{result.stderr.strip()}")
        return (work / f"{NAME}.rcc").read_bytes()


def build(out: Path, version: str, rcc: list[str] | None = None) -> Path:
    rcc = rcc or find_rcc()
    if rcc is None:
        raise PluginError("Qt's rcc was not found: install the gui extra "
                          "(pip install 'PySide6-Essentials') or set AGGBATT_RCC")
    pid = product_id()
    plugin = {
        "name": NAME,
        "version": version,
        "minRequiredVersion": MIN_GUI_VERSION,
        "maxRequiredVersion": MAX_GUI_VERSION,
        "translations": [],
        "integrations": [{"type": 2, "productId": pid, "url": f"qrc:/{NAME}/{page}", "title": title}
                         for page, title in PAGES],
        "resource": base64.b64encode(compile_resource(rcc)).decode("ascii"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(plugin, indent=4) + "\n", encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--version", default="0")
    args = parser.parse_args(argv)
    try:
        print(build(args.out, args.version))
    except PluginError as exc:
        print(f"guiplugin: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
