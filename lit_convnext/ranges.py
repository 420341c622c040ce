"""Option types with their allowed ranges, declared once on the typed signatures.

LightningCLI builds the command line from the constructors' signatures, and jsonargparse validates these
``Annotated`` constraints (through pydantic) while parsing, so an impossible value is refused with the
option's name before any data is read or network built. Values arrive as plain ``int``/``float``, so
checkpoints stay loadable with ``torch.load(weights_only=True)``.
"""


from typing import Annotated

from annotated_types import Ge, Gt, Le, Lt, MultipleOf

PositiveInt = Annotated[int, Ge(1)]
NonNegativeInt = Annotated[int, Ge(0)]
PositiveFloat = Annotated[float, Gt(0)]
NonNegativeFloat = Annotated[float, Ge(0)]
#: A probability or share: 0 to 1 inclusive.
Probability = Annotated[float, Ge(0), Le(1)]
#: A share strictly between 0 and 1 (validation fraction, EMA decay, warning threshold).
OpenFraction = Annotated[float, Gt(0), Lt(1)]
#: Label smoothing and drop path: 0 inclusive to 1 exclusive.
Rate = Annotated[float, Ge(0), Lt(1)]
#: Layer-wise lr decay factor: (0, 1], 1 meaning no decay.
LayerDecay = Annotated[float, Gt(0), Le(1)]
#: Input resolution: ConvNeXt downsamples by 32 in total.
ImageSize = Annotated[int, Ge(32), MultipleOf(32)]
