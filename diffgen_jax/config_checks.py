"""Start-up validation of ml_collections configs: every error names the field and what it allows."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Dict, Iterable, Iterator, Optional, Sequence, Tuple

import ml_collections
import numpy as np

from diffgen_jax.checks import check_number
from diffgen_jax.data import sources as data_sources
from diffgen_jax.data import splits as data_splits


class ConfigError(ValueError):
  """A config field has a value the job cannot run with."""


def get(config: ml_collections.ConfigDict, field: str) -> Any:
  node = config
  for part in field.split("."):
    if part not in node:
      raise ConfigError(f"config.{field} is missing")
    node = node[part]
  return node


def choice(config, field: str, allowed: Iterable[Any]) -> Any:
  allowed = tuple(allowed)
  value = get(config, field)
  if value not in allowed:
    raise ConfigError(f"config.{field}={value!r} is not one of the allowed values {allowed}")
  return value


def entries(value) -> tuple:
  """A tuple field's entries: a comma-separated string ("delta,guidance") or a single number
  counts as its entries, as on the command line."""
  if isinstance(value, str):
    return tuple(v for v in value.split(",") if v)
  if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
    return (value,)
  return value


def fail(field: str, value, requirement: str):
  """Raises ConfigError("config.<field>=<value> <requirement>")."""
  raise ConfigError(f"config.{field}={value!r} {requirement}")


# ------------------------------------------------------------------------------------------------
# Declared settings: one declaration per field (its default, one line of help, what it allows),
# from which defaults.py builds the configs and `check_settings` validates them.


@dataclasses.dataclass(frozen=True)
class Setting:
  """One config field. kind: int, float (ints too), bool or str; of a tuple field, its entries'
  kind (default: the type of the default or of its first entry). low / high: the range of a
  number (open ends with low_open / high_open), of each entry of a tuple. choices: the allowed
  values (of each entry). empty: whether a tuple may be () (default: whether the default is).
  none: whether None is allowed. optional: left out of the default config, checked when set.
  help: one line, shown by `defaults.describe`."""
  default: Any
  help: str
  kind: Any = None
  low: Optional[float] = None
  high: Optional[float] = None
  low_open: bool = False
  high_open: bool = False
  choices: Optional[tuple] = None
  empty: Optional[bool] = None
  none: bool = False
  optional: bool = False

  @property
  def sequence(self) -> bool:
    return isinstance(self.default, (tuple, list))

  @property
  def entry_kind(self):
    if self.kind is not None:
      return self.kind
    return type(self.default[0] if self.sequence else self.default)

  def allows(self) -> str:
    """What the field allows, in words."""
    words = (f"a {'' if self.empty_ok else 'non-empty '}tuple of {self._entry_words(True)}"
             if self.sequence else self._entry_words(False))
    return words + (" or None" if self.none else "")

  def _entry_words(self, plural: bool) -> str:
    if self.choices is not None:
      return f"one of {self.choices}"
    names = {bool: ("True or False",) * 2, int: ("an integer", "integers"),
             float: ("a finite number", "finite numbers"), str: ("a string", "strings")}
    words = names[self.entry_kind][plural]
    if self.low is not None and self.high is not None:
      words += (f" in {'(' if self.low_open else '['}{self.low}, "
                f"{self.high}{')' if self.high_open else ']'}")
    elif self.low is not None:
      words += f" {'>' if self.low_open else '>='} {self.low}"
    elif self.high is not None:
      words += f" {'<' if self.high_open else '<='} {self.high}"
    return words

  @property
  def empty_ok(self) -> bool:
    return self.empty if self.empty is not None else not self.default

  def check(self, value, name: str) -> None:
    """Raises ConfigError "<name>=<value> <what is allowed>" (a tuple shown whole)."""
    if value is None and self.none:
      return
    if not self.sequence:
      return self._check_entry(value, name)
    values = entries(value)
    if not isinstance(values, (list, tuple)) or (not values and not self.empty_ok):
      raise ConfigError(f"{name}={value!r} must be {self.allows()}")
    for v in values:
      try:
        self._check_entry(v, name)
      except ConfigError:
        raise ConfigError(f"{name}={_shown(values)}: each entry must be one of {self.choices}"
                          if self.choices is not None and isinstance(v, self.entry_kind) else
                          f"{name}={_shown(values)} must contain only {self._entry_words(True)}"
                          ) from None

  def _check_entry(self, value, name: str) -> None:
    kind = self.entry_kind
    if kind is float:  # (its messages: NaN, inf and the range each said)
      check_number(value, name, low=self.low, high=self.high, low_open=self.low_open,
                   high_open=self.high_open, error=ConfigError)
    elif kind is int:
      try:
        check_number(value, name, low=self.low, high=self.high, low_open=self.low_open,
                     high_open=self.high_open, integer=True, error=ConfigError)
      except ConfigError:
        raise ConfigError(f"{name}={value!r} must be {self._entry_words(False)}") from None
    elif not isinstance(value, kind):
      raise ConfigError(f"{name}={value!r} must be {'True or False' if kind is bool else 'a string'}")
    if self.choices is not None and value not in self.choices:
      raise ConfigError(f"{name}={value!r} is not one of the allowed values {self.choices}")


def _shown(values) -> str:
  """A tuple field's value as the user wrote it: an override that ml_collections could not parse
  (e.g. `(nan,)`) arrives as the one-string tuple ('(nan,)',), shown here as (nan,)."""
  if len(values) == 1 and isinstance(values[0], str) and values[0][:1] in "([":
    return values[0]
  return repr(tuple(values))


def settings_of(tree, prefix: str = "") -> Dict[str, Setting]:
  """{dotted field: Setting} of a declaration tree (nested dicts of Setting; other leaves, e.g.
  a section built elsewhere, are left out)."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, Setting):
      out[prefix + key] = value
    elif isinstance(value, dict):
      out.update(settings_of(value, f"{prefix}{key}."))
  return out


def check_settings(config, settings: Dict[str, Setting], skip: Iterable[str] = (),
                   prefix: str = "") -> None:
  """Checks every declared field the config has (`Setting.check`), except those in `skip`.
  Errors name the field as config.<prefix>.<field>. A field the config lacks (a saved run's
  config from before the field existed) is left alone."""
  skip = set(skip)
  for field, setting in settings.items():
    if field in skip:
      continue
    node, present = config, True
    for part in field.split("."):
      if not hasattr(node, "keys") or part not in node:
        present = False
        break
      node = node[part]
    if present:
      setting.check(node, f"config.{prefix}{'.' if prefix else ''}{field}")


def data_config(data_config, prefix: str = "data") -> None:
  """The checks of a data ConfigDict that its declarations (defaults.DATA, `check_settings`)
  cannot make: the dataset exists, pseudo-labels have their file, side 2 has a subset size, the
  subset fits the training split. Raises ConfigError naming config.<prefix>.<field>."""
  def field(f):
    return f"config.{prefix}.{f}" if prefix else f"config.{f}"

  for f in ("name", "data_dir", "subset_size", "labels", "x_flip"):
    if f not in data_config:
      raise ConfigError(f"{field(f)} is missing")
  name, data_dir = data_config.name, data_config.data_dir
  if not isinstance(name, str) or not name:
    raise ConfigError(f"{field('name')}={name!r} must be one of the built-in datasets {data_sources.DATASETS}, "
                      "the tfds name of a dataset prepared in data_dir, or "
                      "'edm_zip:TRAIN.zip,VALIDATION.zip'")
  if name.startswith("edm_zip:"):
    from diffgen_jax.data import edm_zip  # pylint: disable=g-import-not-at-top
    try:
      paths = edm_zip.parse_name(name)
    except ValueError as err:
      raise ConfigError(f"{field('name')}: {err}") from None
    for path in paths:
      if not os.path.exists(os.path.expanduser(path)):
        raise ConfigError(f"{field('name')}={name!r}: {path} does not exist")
  elif name not in data_sources.DATASETS and not data_sources.is_prepared(name, data_dir):
    raise ConfigError(f"{field('name')}={name!r} is neither a built-in dataset {data_sources.DATASETS} nor a "
                      f"tfds dataset prepared (array_record) in data_dir="
                      f"{data_sources.resolve_data_dir(data_dir)!r}")
  if data_config.labels == "pseudo":
    path = data_config.get("pseudo_labels")
    if not path or not isinstance(path, str):
      raise ConfigError(f"{field('labels')}='pseudo' needs {field('pseudo_labels')}: a .npz file "
                        f"with integer arrays {data_splits.SPLITS} (see data.read_pseudo_labels)")
    if not os.path.exists(os.path.expanduser(path)):
      raise ConfigError(f"{field('pseudo_labels')}={path!r} does not exist")
  side, subset_size = data_config.get("subset_side", 1), data_config.subset_size
  if side != 1 and not subset_size:
    raise ConfigError(f"{field('subset_side')}={side} needs {field('subset_size')} > 0 (side 2 of "
                      "the whole split would be the whole split again)")
  if subset_size:
    available = data_sources.train_size(name, data_dir)
    if available is not None and subset_size > available:
      raise ConfigError(f"{field('subset_size')}={subset_size} exceeds the {available} images "
                        f"of {name!r}'s training split")
# ------------------------------------------------------------------------------------------------
# Float fields finite (also in the compute dtype); numeric API arguments: diffgen_jax/checks.py


def float_leaves(config, prefix: str = "") -> Iterator[Tuple[str, float]]:
  """(dotted field, value) of every float in a config, including floats inside lists and tuples."""
  items = config.items() if hasattr(config, "items") else ()
  for key, value in items:
    field = f"{prefix}{key}"
    if hasattr(value, "items"):
      yield from float_leaves(value, field + ".")
    elif isinstance(value, (list, tuple)):
      for i, v in enumerate(value):
        if isinstance(v, (float, np.floating)):
          yield f"{field}[{i}]", float(v)
    elif isinstance(value, (float, np.floating)):
      yield field, float(value)


def finite_floats(config) -> None:
  """Every float field of the config must be finite, also once cast to float32, and a non-zero
  one must stay non-zero there.

  A valid Python float such as 1e39 is infinite in float32 (and bfloat16, whose range is
  float32's), so it would reach the computation as inf; 1e-50 would reach it as 0: both rejected
  here, naming the field.
  """
  # Parameters, optimizer state and schedules are float32 whatever training.compute_dtype
  # (bfloat16 activations share float32's exponent range).
  limit = float(np.finfo(np.float32).max)
  for field, value in float_leaves(config):
    if not math.isfinite(value):
      raise ConfigError(f"config.{field}={value!r} must be finite")
    with np.errstate(over="ignore"):  # (1e39 casts to inf: refused below, naming the field)
      in_float32 = np.float32(value)
    if value != 0 and in_float32 == 0:  # e.g. lr=1e-50: a run at learning rate 0
      raise ConfigError(f"config.{field}={value!r} is 0 in float32 (smallest positive value "
                        f"{float(np.finfo(np.float32).smallest_subnormal):.4g}): it would reach "
                        "the computation as 0")
    if abs(value) > limit:
      raise ConfigError(f"config.{field}={value!r} is not finite in float32 (largest finite value "
                        f"{limit:.4g}; bfloat16 has the same range): it would reach the "
                        "computation as inf")


def flag_error(err: Exception, argv: Sequence[str]) -> str:
  """One line for an error absl raised while parsing --config.<field> overrides (a misspelled
  field, a value of the wrong type), naming the override instead of a traceback."""
  text = str(err)
  if text[:1] in "'\"" and text[-1:] == text[:1]:  # a KeyError's repr of its message
    text = text[1:-1]
  text = " ".join(text.replace("\\n", " ").split()).replace("\\'", "'")
  if "Traceback (most recent call last)" in text:  # a config file's own error (e.g. a variant)
    head, _, tail = text.partition(": Error whilst parsing config file")
    text = head + ": " + tail.rsplit("Error: ", 1)[-1]
  overrides = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
  # The override whose field, or one of whose sections, the message quotes.
  named = [(o, p) for o in overrides for p in o.split(".")[1:][::-1] if f"'{p}'" in text]
  where = f"{named[0][0]}: " if named else ""
  if isinstance(err, (AttributeError, KeyError)) and named:  # (KeyError: a section)
    override, part = named[0]
    text = ("no such field" if override.endswith("." + part) else f"no such section {part!r}") + (
        f" ({text.split('?', 1)[0].split(' ', 1)[1]}?)" if "Did you mean" in text else "")
  if "could not convert string to float" in text:
    text = text.split(": could not convert", 1)[0] + ": must be a number (e.g. 2e-4)"
  if "invalid literal for int()" in text:  # e.g. total_images=1e9: ints are written out whole
    text = text.split(": invalid literal", 1)[0]
    text += ": must be an integer written out in digits" + _integer_hint(text.rsplit("=", 1)[-1])
  return where + text


def _integer_hint(literal: str) -> str:
  """' (1000000000, not 1e9)' where the literal is a whole number in float notation."""
  try:
    value = float(literal)
  except ValueError:
    return ""
  return f" ({int(value)}, not {literal})" if value.is_integer() else ""
