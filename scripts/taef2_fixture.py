"""The reference TAEF2 (madebyollin/taesd's taesd.py at 5cccb12, run from a checkout) on the astronaut
face: tests/fixtures/taef2/reference.safetensors, which tests/test_taef2.py compares synclip's module with.

    python scripts/taef2_fixture.py TAESD_CHECKOUT

Input: tests/fixtures/astronaut_face.png resized to 64x64 (cv2 INTER_AREA), RGB in [0, 1], float32.
Recorded: `image` (1, 3, 64, 64), `latents` = encoder(image) (1, 32, 8, 8), `decoded` = decoder(latents)
(1, 3, 64, 64), with the published float16 weights cast to float32 (as synclip loads them).
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]


def main(checkout: Path) -> None:
    sys.path.insert(0, str(checkout))
    from taesd import TAESD  # the reference implementation, not part of synclip

    model = TAESD(checkout / "taef2_encoder.pth", checkout / "taef2_decoder.pth").float().eval()
    face = cv2.cvtColor(cv2.imread(str(ROOT / "tests/fixtures/astronaut_face.png")), cv2.COLOR_BGR2RGB)
    small = cv2.resize(face, (64, 64), interpolation=cv2.INTER_AREA)
    image = torch.from_numpy(small).permute(2, 0, 1)[None].float().div(255).contiguous()
    with torch.no_grad():
        latents = model.encoder(image)
        decoded = model.decoder(latents)
    out = ROOT / "tests/fixtures/taef2/reference.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"image": image, "latents": latents.contiguous(), "decoded": decoded.contiguous()}
    save_file(tensors, str(out), metadata={"source": "madebyollin/taesd 5cccb12 taesd.py"})
    print(out, {k: tuple(v.shape) for k, v in tensors.items()})


if __name__ == "__main__":
    main(Path(sys.argv[1]))
