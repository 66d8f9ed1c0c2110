"""Runtime: the kernel cache, loading, tuning and launching."""
from attngen.runtime.api import attention
from attngen.runtime.compiler import compile
from attngen.runtime.decode import decode
from attngen.runtime.kernel import Kernel

__all__ = ["Kernel", "attention", "compile", "decode"]
