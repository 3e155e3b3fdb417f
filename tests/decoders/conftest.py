"""These tests run many tiny forwards: one intra-op thread is faster than fanning out (and the CI box is shared)."""

import torch

torch.set_num_threads(1)
