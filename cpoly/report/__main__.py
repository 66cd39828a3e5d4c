import sys

from cpoly.report.cli import main

sys.exit(main())
