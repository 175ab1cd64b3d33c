"""Built-in methods: one small file each, registered through the same hook as third-party ones."""

from kvbench.hooks import hookimpl
from kvbench.methods.adakv import AdaKV
from kvbench.methods.cake import Cake
from kvbench.methods.chunkkv import ChunkKV
from kvbench.methods.duoattention import DuoAttention
from kvbench.methods.expected_attention import ExpectedAttention
from kvbench.methods.full import Full
from kvbench.methods.h2o import H2O
from kvbench.methods.keydiff import KeyDiff
from kvbench.methods.kvzip import KVzip
from kvbench.methods.l2norm import L2Norm
from kvbench.methods.lagkv import LagKV
from kvbench.methods.prulong import PruLong
from kvbench.methods.pyramidkv import PyramidKV
from kvbench.methods.random_eviction import RandomEviction
from kvbench.methods.simlayerkv import SimLayerKV
from kvbench.methods.snapkv import SnapKV
from kvbench.methods.streamingllm import StreamingLLM
from kvbench.methods.think import ThinK

BUILTIN_METHODS = [Full, StreamingLLM, DuoAttention, PruLong, SnapKV, PyramidKV, L2Norm, H2O, RandomEviction, KeyDiff]
BUILTIN_METHODS += [AdaKV, ChunkKV]
BUILTIN_METHODS += [LagKV, SimLayerKV]
BUILTIN_METHODS += [ExpectedAttention]
BUILTIN_METHODS += [KVzip, ThinK]
BUILTIN_METHODS += [Cake]


@hookimpl
def kvbench_methods():
    return BUILTIN_METHODS
