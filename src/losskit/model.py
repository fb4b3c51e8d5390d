"""`ObjectiveModel`: trains an inner model on an `Objective` with plain `fit`/`evaluate`."""

import dataclasses

import keras
from keras import ops

from losskit import backend, balancing
from losskit._keras import no_automatic_dependency_tracking, optimizer_counter
from losskit._logs import Latest, NanGuard, StepLogs, check_log_names
from losskit.objective import Objective, weight_logs

# The log name of the inner model's own losses (layer regularizers, `add_loss`) in `loss`.
REGULARIZATION = "regularization_loss"


@keras.saving.register_keras_serializable(package="losskit")
class ObjectiveModel(keras.Model):
    """Trains `inner_model` on an `Objective` with `compile(optimizer=...)` and `fit`.

    ```python
    model = losskit.ObjectiveModel(inner, objective)
    model.compile(optimizer="adam")                         # no loss=
    model.fit({"features": X, "teacher": G}, y, epochs=5)   # "teacher" is side data
    model.predict({"features": X_new})
    ```

    - The inner model receives only its own inputs (functional models: its `Input` names); other
      keys of the feature dict are side data for `"x.<key>"` sources and are not needed to predict.
    - `"layer.<name>"` sources are tapped in the same forward pass (functional inner models only).
    - Each term is logged under its name (and `val_<name>`), scheduled terms' weights under
      `<name>_weight`, and the total as `loss`; sample and class weights apply per sample.
    - Per-sample terms are reduced by the global batch size, so `tf.distribute` strategies and JAX
      `DataParallel` give the single-device update and logs.
    - Scheduled weights read the optimizer step inside the compiled step on every backend.
    - `nan_policy="raise"` stops `fit` at the first step where a term is NaN/Inf, naming it.
    - `balance=` sets the terms' weights during training (`losskit.balancing`); every term's
      applied weight is then logged as `<name>_weight`.
    - `log_grad_norms=True` logs `<name>_grad_norm`: the global L2 norm of the gradient of the
      weighted term w.r.t. the inner model's trainable weights (costs per-term backward passes).
    - Saves and loads (`.keras`, safe mode) with its objective, schedules and balancer state.

    Args:
        inner_model: the Keras model that makes the predictions.
        objective: a `losskit.Objective` (or a list of `losskit.Term`).
        balance: None or a `losskit.balancing` balancer (`Uncertainty()`, `GradNorm(...)`,
            `DWA(...)`, `PCGrad()`).
        log_grad_norms: log each term's gradient norm in training.
        nan_policy: None or `"raise"`.
    """

    def __init__(
        self, inner_model, objective, balance=None, log_grad_norms=False, nan_policy=None, **kwargs
    ):
        super().__init__(**kwargs)
        if not isinstance(objective, Objective):
            objective = Objective(objective)
        if nan_policy not in (None, "raise"):
            raise ValueError(f"nan_policy must be None or 'raise', got {nan_policy!r}")
        self.inner = inner_model
        self.objective = objective
        self.nan_policy = nan_policy
        if not isinstance(log_grad_norms, bool):
            raise TypeError(
                f"ObjectiveModel: log_grad_norms must be True or False, got {log_grad_norms!r}"
            )
        self.log_grad_norms = log_grad_norms
        self.balance = balancing.get(balance)
        self._check_log_names(inner_model.losses)
        self._taps = objective.taps
        # Training computes the model's output only if a term reads it: a fused head loss on a
        # tapped hidden layer never materialises the head's logits (predict still returns them).
        self._needs_pred = any(src.kind == "pred" for src in objective.sources)
        self._tapped = self._tap(inner_model, self._needs_pred) if self._taps else None
        self._with_taps = False
        self._weight_trackers = {
            t.name: Latest(f"{t.name}_weight")
            for t in objective.terms
            if callable(t.weight) or self.balance is not None
        }
        # Only scheduled weights and balancers read the step; otherwise a step spares the update.
        self._steps_matter = self.balance is not None or any(
            callable(t.weight) for t in objective.terms
        )
        self._norm_trackers = {
            t.name: Latest(f"{t.name}_grad_norm") for t in objective.terms if log_grad_norms
        }
        # The last training step's norms, a model weight so that evaluation after
        # `load_model` reports them (metric state is not saved).
        self._grad_norms = self.add_weight(
            shape=(len(objective.terms),),
            initializer="zeros",
            trainable=False,
            name="grad_norms",
            aggregation="only_first_replica",
        ) if log_grad_norms else None
        # The step after the last training step, read by evaluation: under JAX the compiled test
        # step cannot read the optimizer's step (not part of its state); a model variable is.
        self._objective_step = self.add_weight(
            shape=(),
            initializer="zeros",
            dtype="int32",
            trainable=False,
            name="objective_step",
            aggregation="only_first_replica",
        )
        if self.balance is not None:
            self.balance.attach(self)  # its state: weights of this model, saved with it
        if inner_model.built:
            self.built = True

    def _check_log_names(self, own_losses=(), metric_names=()):
        """Refuses a term whose log key another log also uses (`check_log_names`): every key
        this model logs, `regularization_loss` once the inner model has losses and compiled
        metrics once their names are known."""
        terms = self.objective.terms
        keys = weight_logs(terms, balanced=self.balance is not None)
        if self.log_grad_norms:
            keys += [(f"{t.name}_grad_norm", f"the gradient norm of term '{t.name}'")
                     for t in terms]
        keys += [(name, f"the balancer's '{name}'")
                 for name in getattr(self.balance, "contributions", ())]
        if own_losses:
            keys.append((REGULARIZATION, "the inner model's own losses (regularizers, add_loss)"))
        keys += [(name, f"the compiled metric '{name}'") for name in metric_names]
        check_log_names(f"ObjectiveModel '{self.name}'", [t.name for t in terms], keys)

    def _tap(self, inner, with_pred):
        graph = isinstance(inner, keras.Sequential) or hasattr(inner, "_run_through_graph")
        if not graph:
            raise ValueError(
                f"ObjectiveModel: sources {['layer.' + n for n in self._taps]} tap inner layers, "
                f"which needs a functional (or Sequential) inner model; {type(inner).__name__} is "
                "subclassed. Build it with keras.Model(inputs, outputs), or return the tensors as "
                "extra outputs and use 'pred.<key>' sources."
            )
        sequential = isinstance(inner, keras.Sequential)  # has .inputs/.outputs, no .output
        if sequential and not inner.built:
            raise ValueError(
                "ObjectiveModel: build the Sequential inner model (keras.Input first)."
            )
        inputs = inner.inputs[0] if sequential else inner.input
        outputs = {"pred": inner.outputs[0] if sequential else inner.output} if with_pred else {}
        for name in self._taps:
            try:
                outputs[f"layer.{name}"] = inner.get_layer(name).output
            except ValueError:
                names = [layer.name for layer in inner.layers]
                terms = [t.name for t in self.objective.terms
                         if f"layer.{name}" in t.sources.values()]
                raise ValueError(
                    f"ObjectiveModel: term {' and '.join(repr(t) for t in terms)} reads source "
                    f"'layer.{name}', which names no layer of the inner model '{inner.name}'; "
                    f"its layers are {names}."
                ) from None
        return keras.Model(inputs, outputs, name=f"{inner.name}_tapped")

    # ----- forward pass -------------------------------------------------------------------------

    def _inner_inputs(self, x):
        """Selects the inner model's own inputs from the batch's features."""
        if not isinstance(x, dict):
            return x
        structure = getattr(self.inner, "_inputs_struct", None)
        if structure is None:  # subclassed model: every key that is not side data
            side = set(self.objective.side_inputs)
            kept = {k: v for k, v in x.items() if k not in side}
            return next(iter(kept.values())) if len(kept) == 1 else kept
        missing = [t.name for t in keras.tree.flatten(structure) if t.name not in x]
        if missing:
            raise KeyError(
                f"ObjectiveModel: the inner model needs inputs {missing}, missing from the "
                f"features {sorted(x)}."
            )
        return keras.tree.map_structure(lambda t: x[t.name], structure)

    def call(self, inputs, training=None):
        inputs = self._inner_inputs(inputs)
        if self._tapped is None:
            return _run(self.inner, inputs, training)
        outputs = _run(self._tapped, inputs, training)
        if self._with_taps:
            return outputs
        return outputs["pred"] if "pred" in outputs else _run(self.inner, inputs, training)

    def _stepping(self, step, *args):
        # Traced once per compiled function: taps exist only inside train/test steps.
        self._with_taps = True
        try:
            logs = step(*args)
        finally:
            self._with_taps = False
        if backend.is_multi_worker(getattr(self, "distribute_strategy", None)):
            # Keras reduces step logs across workers with a mean over axis 0, which fails on
            # scalars under MultiWorkerMirroredStrategy; give each log that axis.
            logs = {k: ops.expand_dims(v, 0) for k, v in logs.items()}
        return logs

    def train_step(self, *args):
        return self._stepping(super().train_step, *args)

    def test_step(self, *args):
        return self._stepping(super().test_step, *args)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # TF trainer only. Keras reduces the whole nested first batch with one strategy.reduce
        # call, which MultiWorkerMirroredStrategy refuses for dict features. Building needs only
        # shapes and dtypes, which the first replica's batch has.
        if iterator is not None and self._distribute_strategy is not None:
            local = self._distribute_strategy.experimental_local_results
            for _, _, it in iterator:
                batch = next(it)
                data_batch = keras.tree.map_structure(
                    lambda v: local(v)[0] if hasattr(v, "values") else v, batch
                )
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    # ----- loss and metrics ---------------------------------------------------------------------

    @no_automatic_dependency_tracking
    def compile(self, optimizer="rmsprop", **kwargs):
        if kwargs.get("loss") is not None:
            raise ValueError(
                "ObjectiveModel: compile() takes no loss; the objective is the loss. Add the "
                "loss as a losskit.Term instead."
            )
        self._check_log_names(metric_names=_metric_names(kwargs))
        super().compile(optimizer=optimizer, **kwargs)
        extras = [*getattr(self.balance, "contributions", ()), REGULARIZATION]
        self._loss_tracker = StepLogs([t.name for t in self.objective.terms], extras)
        metrics = kwargs.get("metrics") or kwargs.get("weighted_metrics")
        if metrics and self._tapped is not None and not self._needs_pred:
            self._tapped = self._tap(self.inner, with_pred=True)  # metrics read the output

    @staticmethod
    def _with_tap_keys(outputs):
        """Whether `outputs` is the tapped model's dict (`"pred"` and `"layer.<name>"` keys)."""
        return all(k == "pred" or k.startswith("layer.") for k in outputs)

    def compile_from_config(self, config):
        # Keras skips compile() on load for models that override it; ours is safe to replay.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)  # so its saved state can load

    def compute_loss_and_updates(self, *args, optimizer_variables=None, **kwargs):
        # JAX trainer: compute_loss runs in a StatelessScope that maps the model's variables but
        # not the optimizer's, so the optimizer's counter would be a constant frozen at trace
        # time. Hand compute_loss the traced counter from the optimizer state instead.
        self._traced_counter = None
        if optimizer_variables is not None:
            counter, _ = optimizer_counter(self.optimizer)
            index = [i for i, v in enumerate(self.optimizer.variables) if v is counter]
            if index:
                self._traced_counter = optimizer_variables[index[0]]
        try:
            return super().compute_loss_and_updates(
                *args, optimizer_variables=optimizer_variables, **kwargs
            )
        finally:
            self._traced_counter = None

    def _step(self, training):
        """`(step, next_step)`: the step this batch's schedules read, and (training) the step of
        the next training batch. The step is `optimizer.iterations` before this batch's update:
        the number of updates applied so far, so with `gradient_accumulation_steps=k` the `k`
        micro-batches of one update read the same step (their accumulated gradient is that of
        one batch of `k` micro-batches at that step's weights)."""
        if not training:
            return self._objective_step.value, None
        counter, k = optimizer_counter(self.optimizer)
        traced = getattr(self, "_traced_counter", None)
        calls = ops.convert_to_tensor(traced if traced is not None else counter.value)
        if k == 1:
            return calls, calls + 1
        return ops.floor_divide(calls, k), ops.floor_divide(calls + 1, k)

    def _split(self, y_pred):
        """`(layers, pred)` from the forward pass's outputs (the tapped dict, or the output)."""
        if self._tapped is not None and isinstance(y_pred, dict) and self._with_tap_keys(y_pred):
            layers = {k[6:]: v for k, v in y_pred.items() if k.startswith("layer.")}
            return layers, y_pred.get("pred")
        return {}, y_pred

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        layers, pred = self._split(y_pred)
        step, next_step = self._step(training)
        result = self.objective.compute(
            x, y, pred, sample_weight, step=step, layers=layers, variables=self.inner
        )
        total, norms, extras = result.total, None, {}
        if self.balance is not None or self.log_grad_norms:

            def values_fn():  # the terms again, for per-term gradients (a second forward pass)
                taps, out = self._split(self(x, training=True))
                again = self.objective.compute(
                    x, y, out, sample_weight, step=step, layers=taps, variables=self.inner
                )
                return [again.values[t.name] for t in self.objective.terms]

            total, weights, norms, extras = balancing.combine(
                self, result, values_fn, training
            )
            result = dataclasses.replace(result, total=total, weights=weights)
        own = [self._aggregate_additional_loss(loss) for loss in self.losses]
        if own:  # regularizers and add_loss() of the inner model
            if REGULARIZATION in self._loss_tracker.names:  # losses added in call() only
                self._check_log_names(own_losses=own)
            extras = {**extras, REGULARIZATION: sum(own)}
            total = total + extras[REGULARIZATION]
        if training and self._steps_matter:
            self._objective_step.assign(ops.cast(next_step, "int32"))
        self._track(result, extras, norms)
        return total

    def _track(self, result, extras, norms=None):
        names = [t.name for t in self.objective.terms]
        if result.replicas > 1:
            # A batch-independent share times N_global / n_local, weighted by n_local, sums to
            # the global value over replicas whatever the split.
            scale = ops.divide_no_nan(result.global_batch, result.batch)
            extras = {k: v * scale for k, v in extras.items()}
        self._loss_tracker.feed(
            [result.values[n] for n in names],
            [result.weights[n] for n in names],
            [result.counts[n] for n in names],
            extras,
            result.batch,
        )
        for name, tracker in self._weight_trackers.items():
            tracker.update_state(result.weights[name])  # the weight this step applied
        if self._grad_norms is not None:
            if norms is not None:  # training steps; evaluation reports the last ones
                self._grad_norms.assign(ops.stack([norms[n] for n in names]))
                for name in names:
                    self._norm_trackers[name].update_state(norms[name])
            else:
                saved = self._grad_norms.value
                for i, name in enumerate(names):
                    self._norm_trackers[name].update_state(saved[i])

    def get_metrics_result(self):
        # As Keras's, which merges every metric's result into one dict and so lets a later key
        # overwrite an earlier one; a clash that the names known at construction and compile
        # could not show (e.g. a metric Keras renamed `weighted_<name>`) raises here.
        logs, owners = {}, {}
        for metric in self.metrics:
            result = metric.result()
            result = result if isinstance(result, dict) else {metric.name: result}
            ours = metric is getattr(self, "_loss_tracker", None)
            owner = "the objective" if ours else f"metric '{metric.name}'"
            for key in result:
                if key in owners:
                    raise ValueError(
                        f"ObjectiveModel '{self.name}': {owners[key]} and {owner} both log "
                        f"'{key}', and one would overwrite the other. Rename the term "
                        "(Term(..., name=...)) or the metric."
                    )
                owners[key] = owner
            logs.update(result)
        return logs

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        _, pred = self._split(y_pred)
        return super().compute_metrics(x, y, pred, sample_weight=sample_weight)

    def _require_compiled(self, method):
        # Keras checks this itself except in the torch trainer's evaluate, which fails later
        # on a missing attribute; one message names the model on every backend.
        if not self.compiled:
            raise ValueError(
                f"ObjectiveModel '{self.name}': call compile(optimizer=...) before {method}() "
                "(no loss=: the objective is the loss)."
            )

    def train_on_batch(self, *args, **kwargs):
        self._require_compiled("train_on_batch")
        return super().train_on_batch(*args, **kwargs)

    def test_on_batch(self, *args, **kwargs):
        self._require_compiled("test_on_batch")
        return super().test_on_batch(*args, **kwargs)

    def fit(self, x=None, y=None, *args, callbacks=None, **kwargs):
        self._require_compiled("fit")
        _refuse_empty("fit", x)
        callbacks = list(callbacks or [])
        if self.nan_policy == "raise":
            # First, so that it raises before any other callback sees the non-finite batch (a
            # per-batch ModelCheckpoint then keeps the last finite weights).
            callbacks.insert(0, NanGuard([t.name for t in self.objective.terms]))
        if self.balance is not None:
            callbacks.extend(self.balance.callbacks())
        return super().fit(x, y, *args, callbacks=callbacks, **kwargs)

    def evaluate(self, x=None, y=None, *args, callbacks=None, **kwargs):
        self._require_compiled("evaluate")
        _refuse_empty("evaluate", x)
        # fit() validates through evaluate() with its own CallbackList, guard included.
        if not isinstance(callbacks, keras.callbacks.CallbackList):
            callbacks = list(callbacks or [])
            if self.nan_policy == "raise":
                callbacks.insert(0, NanGuard([t.name for t in self.objective.terms]))
        return super().evaluate(x, y, *args, callbacks=callbacks, **kwargs)

    # ----- saving -------------------------------------------------------------------------------

    def export_inner(self, filepath):
        """Saves the inner model alone (`.keras`, uncompiled): the file loads with
        `keras.saving.load_model` in a process that never imports losskit (as long as the inner
        model itself uses no losskit layers or regularisers). A whole `ObjectiveModel` file needs
        losskit imported first; without it Keras reports "Could not locate class
        'ObjectiveModel'"."""
        self.inner.save(filepath, include_optimizer=False)

    def get_config(self):
        return {
            "name": self.name,
            "inner_model": keras.saving.serialize_keras_object(self.inner),
            "objective": keras.saving.serialize_keras_object(self.objective),
            "nan_policy": self.nan_policy,
            "balance": None
            if self.balance is None
            else keras.saving.serialize_keras_object(self.balance),
            "log_grad_norms": self.log_grad_norms,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(config.pop("inner_model"))
        objective = keras.saving.deserialize_keras_object(config.pop("objective"))
        return cls(inner, objective, **config)


def _run(model, inputs, training):
    """`model(inputs, training=training)` inside this model's call.

    This model's own `__call__` has already set the call up (training flag, autocast, losses), so
    a built functional or Sequential model runs its graph directly: its `__call__` would repeat
    that bookkeeping, which an eager (torch) step pays for at every step.
    """
    graph = isinstance(model, keras.Sequential) or hasattr(model, "_run_through_graph")
    if graph and model.built:
        return model.call(inputs, training=training)
    return model(inputs, training=training)


def _refuse_empty(method, x):
    """An empty dataset would run no step; Keras then fails with an unrelated error (JAX:
    UnboundLocalError). Arrays, dicts of arrays and datasets of known size are checked here."""
    sizes = []
    for t in keras.tree.flatten(x):
        if hasattr(t, "shape") and len(t.shape) > 0 and t.shape[0] is not None:
            sizes.append(t.shape[0])
    cardinality = getattr(x, "cardinality", None)
    if callable(cardinality):
        try:
            sizes.append(int(cardinality()))
        except (TypeError, ValueError):  # unknown or infinite size: nothing to check
            pass
    elif hasattr(x, "__len__") and not isinstance(x, (dict, list, tuple)) and not sizes:
        sizes.append(len(x))
    if 0 in sizes:
        raise ValueError(
            f"ObjectiveModel.{method}: the data has no samples (a batch dimension of 0), so "
            "no step would run. Check the split or the filter that produced it."
        )


def _metric_names(compile_kwargs):
    """The log names of `compile`'s metrics that are known before the first step: Keras logs a
    metric given as a string under that string, a `Metric` under its name, a function under its
    `__name__`. Per-output dicts (prefixed by output) and duplicates (which Keras renames) are
    left to the check of the first step's logs (`get_metrics_result`)."""
    names = set()
    for arg in ("metrics", "weighted_metrics"):
        metrics = compile_kwargs.get(arg)
        if metrics is None or isinstance(metrics, dict):
            continue
        for m in metrics if isinstance(metrics, (list, tuple)) else [metrics]:
            if isinstance(m, str):
                names.add(m)
            elif isinstance(m, keras.metrics.Metric):
                names.add(m.name)
            elif callable(m) and hasattr(m, "__name__"):
                names.add(m.__name__)
    return sorted(names)
