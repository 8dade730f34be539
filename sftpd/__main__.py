"""Run sftpd as a module: python -m sftpd."""

import sys

from sftpd.cli import main

sys.exit(main())
