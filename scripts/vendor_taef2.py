"""Convert TAEF2's published state dicts into the vendored diffusers folder
src/synclip/pretrained/assets/taef2 (config.json + diffusion_pytorch_model.safetensors, float16 as
published) and record its checksums in src/synclip/pretrained/assets/SHA256SUMS.

    python scripts/vendor_taef2.py TAESD_CHECKOUT   # madebyollin/taesd at 5cccb12 (or a folder of the two .pth)
"""

from __future__ import annotations

import sys
from pathlib import Path

from synclip.artifacts import load_taef2_published, save_vae
from synclip.pretrained.store import sha256_file, write_sums

PUBLISHED = {  # file → sha256 at madebyollin/taesd 5cccb12dc72074a4be35680c3b108548a7c69978
    "taef2_encoder.pth": "10a4e1021e89d7551eaf161352da8dbd0b1aa83872ae28b150c1df1ce2f147b6",
    "taef2_decoder.pth": "0a44a31e1ae59eb9dbf9359d24942fd3ef5928162c1800d97a28c61d51be0ab5",
}
ASSETS = Path(__file__).resolve().parents[1] / "src/synclip/pretrained/assets"


def main(source: Path) -> None:
    for name, digest in PUBLISHED.items():
        actual = sha256_file(source / name)
        if actual != digest:
            raise SystemExit(f"{source / name}: sha256 {actual}, expected {digest}")
    model = load_taef2_published(source / "taef2_encoder.pth", source / "taef2_decoder.pth")
    target = ASSETS / "taef2"
    save_vae(model.half(), target)
    files = ("config.json", "diffusion_pytorch_model.safetensors")
    write_sums(ASSETS, {f"taef2/{name}": sha256_file(target / name) for name in files})
    print(target)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
