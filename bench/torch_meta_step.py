#!/usr/bin/env python3
"""The WeightFormer meta-training step of src/ml/weightformer/model.ts + meta-train.ts in PyTorch eager,
with the same shapes as bench/meta-step.ts (PROTOTYPE_SHAPE), to compare TF.js on a GPU with the best tool
on the same hardware. Prints one JSON object: ms per step for fp32 and (on CUDA) f16 autocast.

Shapes: T teachers of a 784-64-10 MLP student (rows: 64 of 785 values, then 10 of 65), d = 64, 4 heads,
2 blocks (set attention across teachers, axial attention across all rows, MLP ×2), a batch of 256 digits,
CE + KD loss through the functional student, Adam on every parameter.

  python bench/torch_meta_step.py [--teachers 4] [--batch 256] [--steps 50] [--warmup 10] [--device cuda]
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F


def build(T, d, heads, blocks, hidden_mult, device, layers=((64, 785), (10, 65))):
    g = torch.Generator().manual_seed(1)

    def normal(*shape, std):
        return (torch.randn(*shape, generator=g) * std).to(device).requires_grad_(True)

    def zeros(*shape):
        return torch.zeros(*shape, device=device, requires_grad=True)

    R = sum(r for r, _ in layers)
    hidden = hidden_mult * d
    res = 1 / math.sqrt(2 * blocks)
    p = {}
    for l, (rows, size) in enumerate(layers):
        p[f"in.{l}.w"] = normal(size, d, std=1 / math.sqrt(size))
        p[f"in.{l}.b"] = zeros(d)
        p[f"out.{l}.w"] = normal(d, size, std=0.01)
        p[f"out.{l}.b"] = zeros(size)
    p["emb.layer"] = normal(len(layers), d, std=0.5)
    p["emb.row"] = normal(R, d, std=0.5)
    for i in range(blocks):
        for kind in ("set", "row"):
            p[f"block.{i}.{kind}.qkv"] = normal(d, 3 * d, std=1 / math.sqrt(d))
            p[f"block.{i}.{kind}.out"] = normal(d, d, std=res / math.sqrt(d))
        p[f"block.{i}.mlp.w1"] = normal(d, hidden, std=math.sqrt(2 / d))
        p[f"block.{i}.mlp.b1"] = zeros(hidden)
        p[f"block.{i}.mlp.w2"] = normal(hidden, d, std=res / math.sqrt(hidden))
        p[f"block.{i}.mlp.b2"] = zeros(d)
    tokens = [torch.randn(T, rows, size, generator=g).to(device) for rows, size in layers]
    base = [torch.randn(rows, size, generator=g).mul(0.1).to(device) for rows, size in layers]
    scale = [torch.rand(rows, size, generator=g).mul(0.05).to(device) for rows, size in layers]
    one_hot = torch.zeros(R, len(layers), device=device)
    at = 0
    for l, (rows, _) in enumerate(layers):
        one_hot[at:at + rows, l] = 1
        at += rows
    return p, tokens, base, scale, one_hot, layers


def norm(x):
    return F.layer_norm(x, x.shape[-1:], eps=1e-5)


def attention(h, qkv_w, out_w, heads, across_teachers):
    T, R, d = h.shape
    dh = d // heads
    qkv = (norm(h) @ qkv_w).view(T, R, 3, heads, dh)
    q, k, v = qkv.unbind(2)  # [T, R, heads, dh]
    if across_teachers:  # sequences over T, one per (row, head)
        q, k, v = (x.permute(1, 2, 0, 3) for x in (q, k, v))  # [R, heads, T, dh]
        o = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), -1) @ v
        o = o.permute(2, 0, 1, 3)
    else:  # sequences over rows, one per (teacher, head)
        q, k, v = (x.permute(0, 2, 1, 3) for x in (q, k, v))  # [T, heads, R, dh]
        o = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), -1) @ v
        o = o.permute(0, 2, 1, 3)
    return h + o.reshape(T, R, d) @ out_w


def student_rows(p, tokens, base, scale, one_hot, layers, heads, blocks):
    h = torch.cat([tokens[l] @ p[f"in.{l}.w"] + p[f"in.{l}.b"] for l in range(len(layers))], 1)
    h = h + p["emb.row"] + one_hot @ p["emb.layer"]
    for i in range(blocks):
        h = attention(h, p[f"block.{i}.set.qkv"], p[f"block.{i}.set.out"], heads, True)
        h = attention(h, p[f"block.{i}.row.qkv"], p[f"block.{i}.row.out"], heads, False)
        u = F.gelu(norm(h) @ p[f"block.{i}.mlp.w1"] + p[f"block.{i}.mlp.b1"])
        h = h + u @ p[f"block.{i}.mlp.w2"] + p[f"block.{i}.mlp.b2"]
    pooled = norm(h).mean(0)
    out, at = [], 0
    for l, (rows, _) in enumerate(layers):
        delta = pooled[at:at + rows] @ p[f"out.{l}.w"] + p[f"out.{l}.b"]
        out.append(base[l] + delta * scale[l])
        at += rows
    return out


def loss_of(rows, x, y, teacher_probs, kd_weight=0.5, tau=2.0):
    h = x
    for l, r in enumerate(rows):
        w, b = r[:, :-1], r[:, -1]
        h = h @ w.t() + b
        if l < len(rows) - 1:
            h = F.relu(h)
    ce = F.cross_entropy(h, y)
    kl = F.kl_div(F.log_softmax(h / tau, -1), teacher_probs, reduction="batchmean")
    return (1 - kd_weight) * ce + kd_weight * tau * tau * kl


def run(args, dtype_label):
    device = torch.device(args.device)
    p, tokens, base, scale, one_hot, layers = build(args.teachers, 64, 4, 2, 2, device)
    opt = torch.optim.Adam(p.values(), lr=1e-4)
    x = torch.rand(args.batch, 784, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    tp = torch.full((args.batch, 10), 0.1, device=device)
    use_f16 = dtype_label == "f16"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_f16):
            loss = loss_of(student_rows(p, tokens, base, scale, one_hot, layers, 4, 2), x, y, tp)
        loss.backward()
        opt.step()
        return loss

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        loss.item()  # like the TF.js rig, read the loss back: the step is finished
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"msPerStep": times[len(times) // 2], "loss": float(loss.item())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teachers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 compared with fp32 (TF.js webgpu has no TF32)
    torch.backends.cudnn.allow_tf32 = False
    out = {
        "entry": "torch_meta_step/1",
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "shape": {"teachers": args.teachers, "batchSize": args.batch, "student": "784-64-10", "d": 64, "heads": 4, "blocks": 2},
        "fp32": run(args, "fp32"),
    }
    out["f16"] = run(args, "f16") if args.device.startswith("cuda") else {"skipped": "f16 autocast is measured on CUDA only"}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
