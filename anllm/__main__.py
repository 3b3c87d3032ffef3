import sys

from anllm.cli import main

sys.exit(main())
