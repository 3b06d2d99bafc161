"""`python -m keras_ortho report MODEL`: see `keras_ortho.report`."""

import sys

from keras_ortho.report import main

sys.exit(main())
