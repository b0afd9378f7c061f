import sys

from crrelu_llm.cli import main

sys.exit(main())
