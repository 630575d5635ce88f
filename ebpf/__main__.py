import sys

from ebpf.cli import main

sys.exit(main())
