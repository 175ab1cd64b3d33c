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

# The paper's methods, then the later ones (kvpress's list, kvbench#27), each one small file.
BUILTIN_METHODS = [Full, StreamingLLM, DuoAttention, PruLong, SnapKV, PyramidKV, L2Norm, H2O]
BUILTIN_METHODS += [RandomEviction, KeyDiff, LagKV, ExpectedAttention, KVzip, AdaKV, ChunkKV, Cake, SimLayerKV, ThinK]


@hookimpl
def kvbench_methods():
    return BUILTIN_METHODS
