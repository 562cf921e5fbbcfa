"""Grey photos through the bundled (colour) model: which reduction of the restored RGB back to grey scores best?

    python benchmarks/grey_reduction.py sr2 sr3 sr4 denoise30 denoise50 derain

scikit-image's camera plus the first four Set5/Set14 HR photos (converted to L, when /work/shared/data holds them),
centre 120x120 crops, degraded as grey (the task's degradation on the repeated plane, channel 0 kept), restored,
reduced to grey by the channel mean, BT.601 luma or the green channel; mean PSNR on the grey plane (SR border =
scale). Figures quoted in ipt/core/images/channels.py.
"""
import math, sys, torch, numpy as np
from pathlib import Path
from PIL import Image
from skimage import data
from ipt.core.inference.restorer import load_task_model, TaskRestorer
from ipt.core.evaluation.metrics import quantize
torch.set_num_threads(1)
imgs = {"camera": data.camera()}
for d in ["/work/shared/data/Set5/HR", "/work/shared/data/Set14/HR"]:
    for f in sorted(Path(d).glob("*.png"))[:4]:
        imgs[f.stem] = np.asarray(Image.open(f).convert("L"))
C = 120
def crop(a):
    h, w = a.shape; t, l = (h - C) // 2, (w - C) // 2
    return torch.from_numpy(a[t:t+C, l:l+C].astype(np.float32))
def psnr(a, b, border):
    if border: a, b = a[..., border:-border, border:-border], b[..., border:-border, border:-border]
    mse = float(((a - b) ** 2).mean()); return 10 * math.log10(255**2 / mse)
reducers = {"mean": lambda y: y.mean(0), "bt601": lambda y: (0.299*y[0] + 0.587*y[1] + 0.114*y[2]), "green": lambda y: y[1]}
for task in sys.argv[1:]:
    m = load_task_model(None, task, "cpu"); spec = m.spec(task); s = spec.scale; r = TaskRestorer(m, task)
    tot = {k: [] for k in reducers}; rgbdiff = []
    for i, (name, a) in enumerate(imgs.items()):
        g = crop(a); rgb = g.expand(3, -1, -1).contiguous()
        deg = spec.degrade(rgb[None], torch.Generator().manual_seed(i))[0][:1].expand(3, -1, -1)  # grey degradation
        y = r(deg)
        rgbdiff.append(float((y.max(0).values - y.min(0).values).max()))
        for k, f in reducers.items():
            tot[k].append(psnr(quantize(f(y)), g, s if s > 1 else 0))
    print(task, " ".join(f"{k} {np.mean(v):.3f}" for k, v in tot.items()), f"(n={len(imgs)}, max channel spread {max(rgbdiff):.1f})", flush=True)
