"""`multimodal info`: the package version and the named backbone presets with their parameter counts."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="print the version and the named backbone presets")
    p.add_argument("--preset", help="show only this preset")
    p.set_defaults(func=run)


def run(args) -> int:
    import multimodal
    from multimodal.backbone.count import count_parameters
    from multimodal.config import PRESETS, preset

    print(f"multimodal {multimodal.__version__}")
    names = [args.preset] if args.preset else list(PRESETS)
    for name in names:
        cfg = preset(name)
        try:
            summary = count_parameters(cfg).summary()
        except NotImplementedError as exc:
            summary = f"(not buildable here: {exc})"
        print(f"  {name:18s} {cfg.num_hidden_layers:3d} layers, hidden {cfg.hidden_size:5d}: {summary}")
    return 0
