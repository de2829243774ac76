"""nbval (``make test``) runs each notebook on a kernel with private Unix sockets: two pytest workers starting
kernels at once cannot race for a TCP port (see cfcl/jupyter.py)."""
import nbval.kernel

from cfcl.jupyter import PrivateKernelManager

nbval.kernel.KernelManager = PrivateKernelManager
