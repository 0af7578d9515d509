import sys

from cganraw.tune.command import main

sys.exit(main())
