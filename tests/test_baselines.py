"""The paper's baselines: every model builds from the schema and learns, has the parameter count its
architecture implies, computes its paper's distinctive formula, and goes through train.py, eval.py
and export.py like IntTower. (That every tower model serves as IntTower does, user heads + cached
item heads, is test_model.py's serving test, run for each of them.)"""
import json
import os
from concurrent.futures import ThreadPoolExecutor

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

import get_dataset
import model_config
import train
import util
from baselines import CrossLayer, FieldGate, FMInteraction, InteractingLayer, mimic_loss
from conftest import (all_finite, random_features, random_labels, randomize_parameters, run, softmax, split_features,
                      tiny_config)
from networks import MODELS, TOWER_MODELS, build_network

TOL = dict(rtol=1e-5, atol=1e-5)
BASELINES = ("dssm", "dat", "cold", "wdl", "deepfm", "dcn", "autoint")


def test_every_model_name_has_a_network_and_only_tower_models_serve_split():
    assert set(MODELS) == set(model_config.MODEL_NAMES)
    assert set(TOWER_MODELS) == {"inttower", "two_tower", "dssm", "dat"}
    for name, network in MODELS.items():
        assert hasattr(network, "score_candidates") == (name in TOWER_MODELS)


# 1. every model builds from the schema and learns

@pytest.mark.parametrize("model", model_config.MODEL_NAMES)
def test_every_model_predicts_and_a_train_step_changes_every_weight(schema, model):
    config = tiny_config(model=model)
    net, _, step = train.build(schema, config, seed=0)
    features = random_features(schema, config, batch=16)

    net.set_train(False)
    probability = net(*features).asnumpy()
    assert probability.shape == (16,) and ((probability > 0) & (probability < 1)).all()

    params = net.trainable_params()
    before = [p.asnumpy().copy() for p in params]
    step.set_train(True)
    loss = step(random_labels(16, 6), *features)

    # Adam turns a non-finite gradient into non-finite weights
    assert all_finite([loss, *params])
    assert not [p.name for p, b in zip(params, before) if np.array_equal(p.asnumpy(), b)]


# 2. parameter counts

def mlp_parameters(in_dim, sizes, batch_norm):
    """(trainable, moving statistics) of Dense -> [BatchNorm] -> ReLU layers."""
    trainable = moving = 0
    for size in sizes:
        trainable += in_dim * size + size + (2 * size if batch_norm else 0)
        moving += 2 * size if batch_norm else 0
        in_dim = size
    return trainable, moving


def expected_parameter_counts(schema, config):
    """(trainable, total) from the architecture of each baseline."""
    vocab, dim, layers, last = schema["vocab"], config.sparse_embedding_dim, config.mlp_layers, config.mlp_layers[-1]
    user_vocab = [vocab[name] for name in ("user_id", "gender", "age", "occupation")]
    item_vocab = [vocab["movie_id"], vocab["genres"]]
    if config.model in ("dssm", "dat"):
        augmented = last if config.model == "dat" else 0

        def tower(vocab_sizes):  # no Light-SE; BatchNorm on the input, which ends with the augmented vector
            inputs = len(vocab_sizes) * dim + 1 + augmented
            trainable, moving = mlp_parameters(inputs, layers, batch_norm=True)
            return sum(vocab_sizes) * dim + 2 * inputs + trainable, 2 * inputs + moving

        (user, user_moving), (item, item_moving) = tower(user_vocab), tower(item_vocab)
        trainable = user + item + 1 + (vocab["user_id"] + vocab["movie_id"]) * augmented
        return trainable, trainable + user_moving + item_moving
    fields = len(user_vocab + item_vocab)
    inputs = fields * dim + 2
    trainable = sum(user_vocab + item_vocab) * dim + mlp_parameters(inputs, layers, batch_norm=False)[0] + 1
    if config.model in ("wdl", "deepfm"):
        trainable += sum(user_vocab + item_vocab) + 2 + last        # linear term, deep output
    elif config.model == "dcn":
        trainable += config.dcn_cross_num * 2 * inputs + inputs + last   # cross kernels and biases, output
    elif config.model == "autoint":
        trainable += config.autoint_layers * 4 * dim * dim + fields * dim + last   # Wq, Wk, Wv, Wres, output
    elif config.model == "cold":
        trainable += fields * dim * fields + fields + last           # SE gate, deep output
    return trainable, trainable


@pytest.mark.parametrize("model", BASELINES)
def test_parameter_count_matches_the_architecture(schema, model):
    config = tiny_config(model=model, dcn_cross_num=3, autoint_layers=2)
    net = build_network(schema, config)

    trainable = sum(p.size for p in net.trainable_params())
    total = sum(p.size for p in net.get_parameters())

    assert (trainable, total) == expected_parameter_counts(schema, config)


# 3. each model's distinctive piece against its paper's formula

def test_dcn_cross_layer_is_x0_times_xl_dot_w_plus_b_plus_xl():
    rng = np.random.default_rng(1)
    x0, x = (rng.normal(size=(5, 7)).astype(np.float32) for _ in range(2))
    layer = randomize_parameters(CrossLayer(7))
    weight, bias = layer.weight.asnumpy(), layer.bias.asnumpy()

    expected = x0 * (x @ weight) + bias + x

    np.testing.assert_allclose(layer(Tensor(x0), Tensor(x)).asnumpy(), expected, **TOL)


def test_fm_term_sums_the_dot_products_of_every_pair_of_fields():
    fields = np.random.default_rng(2).normal(size=(4, 6, 8)).astype(np.float32)

    expected = sum(np.einsum("bd,bd->b", fields[:, i], fields[:, j]) for i in range(6) for j in range(i + 1, 6))

    np.testing.assert_allclose(FMInteraction(6, 8)(Tensor(fields)).asnumpy(), expected, **TOL)


def test_cold_gate_scales_each_field_by_a_sigmoid_of_all_fields():
    fields = np.random.default_rng(3).normal(size=(4, 6, 8)).astype(np.float32)
    gate = randomize_parameters(FieldGate(6, 8))
    weight, bias = gate.excitation.weight.asnumpy(), gate.excitation.bias.asnumpy()

    weights = 1 / (1 + np.exp(-(fields.reshape(4, -1) @ weight.T + bias)))
    expected = fields * weights[..., None]

    np.testing.assert_allclose(gate(Tensor(fields)).asnumpy(), expected, **TOL)


def test_autoint_layer_is_multi_head_self_attention_over_fields_with_a_residual():
    fields = np.random.default_rng(4).normal(size=(3, 6, 8)).astype(np.float32)
    layer = randomize_parameters(InteractingLayer(8, heads=2))
    query, key, value, residual = np.split(fields @ layer.projections.weight.asnumpy().T, 4, axis=-1)

    heads = []
    for head in (slice(0, 4), slice(4, 8)):
        attention = softmax(query[..., head] @ key[..., head].transpose(0, 2, 1))   # [B, F, F], unscaled
        heads.append(attention @ value[..., head])
    expected = np.maximum(np.concatenate(heads, axis=-1) + residual, 0)

    np.testing.assert_allclose(layer(Tensor(fields)).asnumpy(), expected, **TOL)


def test_dat_mimic_loss_pulls_the_augmented_vector_to_the_other_side_on_positives_only():
    rng = np.random.default_rng(5)
    augmented, target = (rng.normal(size=(8, 4)).astype(np.float32) for _ in range(2))
    labels = random_labels(8, 3)
    y = labels.asnumpy()

    loss, (grad_augmented, grad_target) = ms.value_and_grad(mimic_loss, grad_position=(0, 1))(
        Tensor(augmented), Tensor(target), labels)

    np.testing.assert_allclose(loss.asnumpy(), np.mean(y * ((augmented - target) ** 2).sum(axis=1)), **TOL)
    np.testing.assert_allclose(grad_augmented.asnumpy(), 2 * y[:, None] * (augmented - target) / 8, **TOL)
    assert not grad_target.asnumpy().any()   # the other tower's output only teaches


def normalized(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_dat_feeds_each_id_augmented_vector_to_its_tower_and_mimics_the_other_tower(schema):
    config = tiny_config(model="dat", input_norm=False, dat_mimic_weight=0.3)
    net = randomize_parameters(build_network(schema, config))
    net.set_train(False)
    features = random_features(schema, config, batch=8)
    user_features, item_features = split_features(config, features)
    user_layers, item_layers = net.user_layers(*user_features), net.item_layers(*item_features)
    user_vectors = net.user_augmented.embedding_table.asnumpy()[user_features[0].asnumpy()]
    item_vectors = net.item_augmented.embedding_table.asnumpy()[item_features[0].asnumpy()]

    # each tower's input ends with the augmented vector of its id
    np.testing.assert_allclose(user_layers[0].asnumpy()[:, -8:], user_vectors, **TOL)
    np.testing.assert_allclose(item_layers[0].asnumpy()[:, -8:], item_vectors, **TOL)

    labels = random_labels(8, 5)
    user_out, item_out = user_layers[-1].asnumpy(), item_layers[-1].asnumpy()
    y = labels.asnumpy()
    expected = 0.3 * np.mean(y * (((user_vectors - normalized(item_out)) ** 2).sum(1)
                                  + ((item_vectors - normalized(user_out)) ** 2).sum(1)))
    loss = net.representation_loss(labels, user_layers[-1], item_layers[-1], *features)
    np.testing.assert_allclose(loss.asnumpy(), expected, **TOL)


def test_dssm_scores_the_scaled_cosine_of_the_last_layers(schema):
    config = tiny_config(model="dssm", dssm_gamma=3.0)
    net = randomize_parameters(build_network(schema, config))
    net.set_train(False)
    features = random_features(schema, config, batch=8)
    user_features, item_features = split_features(config, features)
    user = net.user_layers(*user_features)[-1].asnumpy()
    item = net.item_layers(*item_features)[-1].asnumpy()

    cosine = (normalized(user) * normalized(item)).sum(axis=1)
    expected = 1 / (1 + np.exp(-(3.0 * cosine + net.bias.asnumpy())))

    np.testing.assert_allclose(net(*features).asnumpy(), expected, **TOL)


def test_wide_term_is_a_weight_per_id_with_genres_averaged_and_per_dense_value(schema):
    config = tiny_config(model="wdl")
    net = randomize_parameters(build_network(schema, config))
    net.set_train(False)
    features = [f.asnumpy() for f in random_features(schema, config, batch=8)]
    user_id, gender, age, occupation, user_mean, movie_id, genres, item_mean = features
    user_side, item_side = net.linear.user, net.linear.item

    def weights(table, ids):
        return table.embedding_table.asnumpy()[ids, 0]

    padding = genres > 0
    genre_mean = (weights(item_side.multi_embedding, genres) * padding).sum(1) / np.maximum(padding.sum(1), 1)
    dense_weight = net.dense_linear.weight.asnumpy()[0]
    expected = (sum(weights(table, ids) for table, ids in zip(user_side.embeddings, (user_id, gender, age, occupation)))
                + weights(item_side.embeddings[0], movie_id) + genre_mean
                + dense_weight[0] * user_mean + dense_weight[1] * item_mean)

    tensors = [Tensor(f) for f in features]
    fields, dense = net.fields(*tensors)
    wide = net.logits(*tensors) - net.interaction_logit(fields, dense) - net.bias
    np.testing.assert_allclose(wide.asnumpy(), expected, **TOL)


def test_autoint_heads_must_divide_the_embedding_size():
    args = train.parse_args(["--model", "autoint", "--sparse-embedding-dim", "32", "--autoint-heads", "3"])
    with pytest.raises(util.UsageError, match="--autoint-heads"):
        model_config.config_from_args(args)


# 4. every baseline through the commands

TINY = ["--dataset", "synthetic", "--synthetic-scale", "0.01", "--mlp-layers", "16", "8", "--sparse-embedding-dim",
        "8", "--batch-size", "256", "--max-steps", "2", "--quiet"]
ONNX_MODELS = ("autoint",)
# eval.py reads every model the way export.py --verify does (its network rebuilt from the checkpoint,
# its data matched); it runs here for a tower and a ranking model
EVAL_MODELS = ("dat", "dcn")


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """Each baseline trained two steps with train.py, then eval.py (EVAL_MODELS), then export.py
    --verify (--serving for tower models; and ONNX for ONNX_MODELS), two models at a time:
    {model: (workdir, {step: run})}.
    A pipeline stops at its first failing command."""
    data_root = tmp_path_factory.mktemp("data")
    get_dataset.load_dataset(model_config.Config(dataset="synthetic", synthetic_scale=0.01), str(data_root))

    def pipeline(model):
        workdir = tmp_path_factory.mktemp(model)
        data = ["--data-root", data_root, "--quiet"]
        commands = {"train": ("train.py", *TINY, "--model", model, "--data-root", data_root)}
        if model in EVAL_MODELS:
            commands["eval"] = ("eval.py", *data)
        commands["export"] = ("export.py", "--verify", *data) + (("--serving",) if model in TOWER_MODELS else ())
        if model in ONNX_MODELS:
            commands["onnx"] = ("export.py", "--file-format", "ONNX", "--batch-size", "64", "--verify", *data)
        runs = {}
        for step, (script, *args) in commands.items():
            runs[step] = run(script, *args, cwd=workdir, check=False)
            if runs[step].returncode:
                break
        return workdir, runs

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(BASELINES, pool.map(pipeline, BASELINES)))


@pytest.mark.parametrize("model", BASELINES)
def test_every_baseline_trains_and_exports_through_the_commands(pipelines, model):
    workdir, runs = pipelines[model]
    for step, result in runs.items():
        assert result.returncode == 0, f"{step}: {result.stderr[-3000:]}"
    assert json.loads((workdir / "output" / "train_metrics.json").read_text())["config"]["model"] == model
    name = MODELS[model].__name__  # every file is named after the model that wrote it
    assert {f"{name}.ckpt", f"{name}-last.ckpt", f"{name}.mindir"} <= set(os.listdir(workdir / "output"))
    assert model not in EVAL_MODELS or runs["eval"].stdout.startswith("test_auc=")
    verified = [line for name in ("export", "onnx") if name in runs for line in runs[name].stdout.splitlines()]
    assert len(verified) == (5 if model in TOWER_MODELS else 1) + (model in ONNX_MODELS)
    assert all(line.startswith("verify ") and float(line.rsplit("=", 1)[1]) <= 1e-5 for line in verified)


def test_serving_export_of_a_ranking_model_exits_2_and_writes_nothing(pipelines, tmp_path):
    workdir, _ = pipelines["cold"]
    result = run("export.py", "--ckpt", workdir / "output" / "COLD.ckpt", "--serving", "--file-name",
                 tmp_path / "served", cwd=workdir, check=False)
    assert result.returncode == 2
    assert "needs the user and the item together" in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())
