"""Side-by-side timing of the sequence models' training steps and predictive draws against their deterministic torch
twins: the paper's LSTM forecaster (2 layers, H = 64, ranks 14/20, 24-step windows of 15 features) and a pre-LN
Transformer classifier (d = 256, 4 layers, 4 heads, FFN 512, rank 16, vocabulary 30522, length 64), plus the
embedding lookup alone. Medians over interleaved rounds, ratios to the deterministic step (or forward).

Usage: ``python benchmarks/sequence_layers.py [--batch 128] [--rounds 5] [--repeats 5] [--draws 32]``
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _timing import print_ratios, time_interleaved
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from torch import nn

import pyro_lowrank  # noqa: F401  (module-local params)
from pyro_lowrank.guides import FactorGuide
from pyro_lowrank.models import LowRankLSTMForecaster, LowRankTransformerClassifier
from pyro_lowrank.nn import LowRankEmbedding
from pyro_lowrank.predictive import predict


def svi_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_data: int) -> tuple[Callable[[], None], FactorGuide]:
    guide = FactorGuide(model)
    loss_fn = TraceMeanField_ELBO()(model, guide)
    loss_fn(x, y, num_data=num_data)  # set the guide up
    opt = torch.optim.Adam(loss_fn.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(x, y, num_data=num_data).backward()
        opt.step()

    return step, guide


def torch_step(net: nn.Module, x: torch.Tensor, loss: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss(net(x)).backward()
        opt.step()

    return step


class TorchForecaster(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(15, 64, 2, batch_first=True)
        self.head = nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0][:, -1]).squeeze(-1)


class TorchTransformer(nn.Module):
    def __init__(self, vocab: int, length: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 256, padding_idx=0)
        self.position = nn.Parameter(0.02 * torch.randn(length, 256))
        layer = nn.TransformerEncoderLayer(256, 4, 512, dropout=0.1, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(256)
        self.head = nn.Linear(256, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(tokens) + self.position, src_key_padding_mask=tokens == 0)
        return self.head(self.norm(h[:, 0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--draws", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    threads = torch.get_num_threads()

    x, y = torch.randn(args.batch, 24, 15), torch.randn(args.batch)
    det = TorchForecaster()
    bnn = LowRankLSTMForecaster(15)
    bnn_step, guide = svi_step(bnn, x, y, num_data=20000)
    x_pred = torch.randn(1024, 24, 15)
    cases = {
        "torch LSTM step": torch_step(det, x, lambda f: F.mse_loss(f, y)),
        "low-rank LSTM SVI step": bnn_step,
    }
    times = time_interleaved(cases, args.rounds, args.repeats)
    print_ratios(f"LSTM forecaster training step, batch {args.batch}x24x15, threads {threads}; ratio to torch",
                 times, "torch LSTM step")

    def det_forward(batch: torch.Tensor) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                det(batch)

        return run

    cases = {
        "torch LSTM, 1 forward": det_forward(x_pred),
        f"torch LSTM, {args.draws}x the windows": det_forward(x_pred.repeat(args.draws, 1, 1)),
        f"low-rank LSTM, {args.draws} draws": lambda: predict(bnn, guide, x_pred, num_samples=args.draws),
        f"low-rank LSTM, {args.draws} draws, batch_size=128": lambda: predict(
            bnn, guide, x_pred, num_samples=args.draws, batch_size=128),
    }
    times = time_interleaved(cases, args.rounds, 1)
    print_ratios("\nLSTM forecaster prediction, 1024 windows; ratio to one deterministic forward", times,
                 "torch LSTM, 1 forward")

    vocab, length, batch = 30522, 64, 32
    tokens = torch.randint(1, vocab, (batch, length))
    labels = torch.randint(0, 2, (batch,))
    det_tf = TorchTransformer(vocab, length)
    tf_step, _ = svi_step(LowRankTransformerClassifier(vocab, 2, max_len=length), tokens, labels, num_data=67349)
    cases = {"torch Transformer step": torch_step(det_tf, tokens, lambda f: F.cross_entropy(f, labels)),
             "low-rank Transformer SVI step": tf_step}
    times = time_interleaved(cases, args.rounds, max(1, args.repeats // 2))
    print_ratios(f"\nTransformer classifier training step, batch {batch}x{length}; ratio to torch", times,
                 "torch Transformer step")

    emb, lr_emb = nn.Embedding(vocab, 256), LowRankEmbedding(vocab, 256, 16, sequence_dims=1)

    def torch_lookup() -> None:
        emb.zero_grad(set_to_none=True)
        emb(tokens).sum().backward()

    a = (0.1 * torch.randn(vocab, 16)).requires_grad_()
    b = (0.1 * torch.randn(256, 16)).requires_grad_()

    def lowrank_lookup() -> None:
        poutine.condition(lr_emb, data={"A": a, "B": b})(tokens).sum().backward()

    times = time_interleaved({"nn.Embedding": torch_lookup, "LowRankEmbedding r=16": lowrank_lookup},
                             args.rounds, args.repeats * 4)
    print_ratios(f"\nEmbedding forward+backward, V={vocab}, d=256, tokens {batch}x{length}; ratio to nn.Embedding",
                 times, "nn.Embedding")


if __name__ == "__main__":
    main()
