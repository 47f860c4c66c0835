"""The referring model: the two fusions (equation, equal parameter budgets), the frame embedder, the text encoders
(the small one and a Hugging Face model from a tiny local config, no download), the deploy form and the rebuild
from a checkpoint's meta."""

from __future__ import annotations

import pytest
import torch

from unireplknet.modalities.text import TextTransformer, WordTokenizer
from unireplknet.models import build_model_from_checkpoint, reparameterize
from unireplknet.models.referring import (
    AsymmetricTextFusion,
    CrossAttentionFusion,
    FrameNeighbours,
    ReferringSegmenter,
    from_meta,
)

ARCH = {"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32], "kernel_sizes": [[3], [7], [5], [3]]}
VOCAB = ["the", "red", "square", "moving", "left"]


def _text(dim: int = 16, max_len: int = 9) -> dict:
    return {"name": "words", "vocab": VOCAB, "dim": dim, "depth": 1, "heads": 2, "max_len": max_len}


@pytest.mark.parametrize("dim", [8, 32])
def test_fusions_have_the_same_parameter_budget(dim):
    budgets = {len(str(k)): sum(p.numel() for p in m(dim, 16).parameters())
               for k, m in ((0, AsymmetricTextFusion), (1, CrossAttentionFusion))}
    assert set(budgets.values()) == {4 * dim * (dim + 1)}


def test_asymmetric_text_fusion_is_the_sentence_as_a_depthwise_kernel():
    """Against a float64 loop of Z[n,c,i,j] = Σ_{m,k} Xp[n,c,i+m,j+k] · Y[n,c,m,k] / (Kh·Kw), with X and Y the
    projected map and token grid ('same' padding, even kernels leaning right), then the output projection and the
    channel mix."""
    torch.manual_seed(0)
    D, L, N, H, W = 6, 6, 2, 5, 7  # 6 tokens -> a 2x3 kernel
    fusion = AsymmetricTextFusion(D, L).double()
    x, text = torch.randn(N, D, H, W, dtype=torch.float64), torch.randn(N, L, D, dtype=torch.float64)
    got = fusion(x, text, torch.ones(N, L, dtype=torch.bool))
    f = fusion.fuse
    xp = torch.einsum("nchw,dc->ndhw", x, f.proj_x.weight) + f.proj_x.bias[None, :, None, None]
    y = (text @ f.proj_y.weight.T + f.proj_y.bias).transpose(1, 2).reshape(N, D, 2, 3)
    pad = torch.nn.functional.pad(xp, (1, 1, 0, 1))  # Kh=2: 0 above, 1 below; Kw=3: 1 left, 1 right
    z = torch.zeros_like(xp)
    for n in range(N):
        for c in range(D):
            for i in range(H):
                for j in range(W):
                    z[n, c, i, j] = (pad[n, c, i:i + 2, j:j + 3] * y[n, c]).sum() / 6
    z = torch.einsum("nchw,dc->ndhw", z, f.proj_out.weight) + f.proj_out.bias[None, :, None, None] + x
    want = z + fusion.mix(torch.nn.functional.gelu(z))
    assert torch.allclose(got, want, atol=1e-10)
    # the sentence matters: another sentence, another output
    assert not torch.allclose(fusion(x, text.flip(1), torch.ones(N, L, dtype=torch.bool)), got)


def test_cross_attention_ignores_padding():
    torch.manual_seed(0)
    fusion = CrossAttentionFusion(8, 4).eval()
    x, text = torch.randn(2, 8, 3, 3), torch.randn(2, 4, 8)
    valid = torch.tensor([[True, True, False, False]] * 2)
    out = fusion(x, text, valid)
    text2 = text.clone()
    text2[:, 2:] = 100.0  # padded positions do not count
    assert torch.allclose(fusion(x, text2, valid), out, atol=1e-6)


def test_frame_neighbours():
    frames = torch.arange(2 * 3, dtype=torch.float32).view(2, 3, 1, 1, 1).expand(2, 3, 2, 1, 1)
    out = FrameNeighbours(1)(frames)  # (6, 6, 1, 1): per frame [t-1, t, t+1] x 2 channels, clamped
    assert out.shape == (6, 6, 1, 1)
    assert out[:, ::2, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 2], [3, 3, 4], [3, 4, 5], [4, 5, 5]]


def test_word_tokenizer_and_text_transformer():
    tok = WordTokenizer(VOCAB, 4)
    assert tok("The RED, square!").tolist() == [2, 3, 4, 0]
    assert tok("the blue square moving left").tolist() == [2, 1, 4, 5]  # unknown word, truncated
    enc = TextTransformer(len(VOCAB) + 2, 16, 1, 2, 4).eval()
    feats, valid = enc(torch.stack([tok("the red square"), tok("")]))
    assert feats.shape == (2, 4, 16) and valid.tolist() == [[True, True, True, False], [False] * 4]
    assert torch.isfinite(feats).all()


@pytest.mark.parametrize("fusion", ["asymmetric", "cross_attention"])
def test_model_shapes_deploy_form_and_rebuild(fusion):
    torch.manual_seed(0)
    kw = {"backbone": ARCH, "text": _text(), "fusion": fusion, "dim": 16, "context": 1}
    model = ReferringSegmenter(**kw)
    for m in model.modules():  # non-trivial BatchNorm statistics so the deploy form has something to fold
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    model.eval()
    frames = torch.randn(2, 3, 3, 40, 48)
    tokens = torch.stack([WordTokenizer(VOCAB, 9)(t) for t in ("the red square", "moving left")])
    out = model((frames, tokens))
    assert out.shape == (2, 3, 40, 48)
    assert model(frames).shape == (2, 3, 40, 48)  # a bare clip: the empty sentence
    deploy = ReferringSegmenter(**kw)
    deploy.load_state_dict(model.state_dict())
    reparameterize(deploy).eval()
    assert deploy.deploy and torch.allclose(deploy((frames, tokens)), out, atol=1e-4)
    meta = {"builder": "referring", "referring": kw, "deploy": True}
    rebuilt, _ = build_model_from_checkpoint({"model": deploy.state_dict(), "meta": meta})
    assert torch.equal(rebuilt.eval()((frames, tokens)), deploy((frames, tokens)))
    assert isinstance(from_meta({**meta, "deploy": False}), ReferringSegmenter)


def test_hugging_face_text_encoder_from_a_local_tiny_config(tmp_path, monkeypatch):
    """Any Hugging Face model by name or folder: a tiny random BERT and a WordPiece vocabulary written here."""
    transformers = pytest.importorskip("transformers")
    from unireplknet.modalities.text import build_text_encoder, hf_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = write_tiny_bert(tmp_path / "tiny-bert")
    encode = hf_tokenizer(str(folder), 8)
    ids = encode("the red square")
    assert ids.tolist() == [2, 5, 6, 10, 3, 0, 0, 0]  # [CLS] the red square [SEP] [PAD]x3
    spec = {"name": str(folder), "dim": 16, "max_len": 8,
            "config": transformers.AutoConfig.from_pretrained(folder).to_dict()}
    trained = build_text_encoder(spec, pretrained=True).eval()
    rebuilt = build_text_encoder(spec).eval()  # from the config alone
    rebuilt.load_state_dict(trained.state_dict())
    feats, valid = trained(ids[None])
    assert feats.shape == (1, 8, 16) and valid[0].tolist() == [True] * 5 + [False] * 3
    assert torch.allclose(rebuilt(ids[None])[0], feats, atol=1e-6)


def write_tiny_bert(folder):
    """A randomly initialised 2-layer BERT (hidden 32) and its WordPiece tokenizer, saved as a local model folder."""
    import transformers

    words = ["the", "red", "green", "blue", "yellow", "square", "circle", "triangle", "small", "large", "big",
             "little", "moving", "moves", "going", "left", "right", "up", "down", "box", "a"]
    folder.mkdir(parents=True)
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    transformers.BertTokenizerFast(vocab=vocab).save_pretrained(folder)
    config = transformers.BertConfig(vocab_size=5 + len(words), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=32,
                                     pad_token_id=0)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    return folder
