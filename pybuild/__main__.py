import sys

from pybuild.cli import main

sys.exit(main())
