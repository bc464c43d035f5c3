"""Tutorial: Error Handling - ExceptionGroup (Python 3.11+).

`except*` is a syntax error before Python 3.11, and a version check in the same file would
never get to run there (the whole file fails to compile first). So this file checks the
version, and the tutorial's program itself lives in `_exception_group.py` beside it, which
only 3.11+ ever imports.
"""

import asyncio
import sys

if sys.version_info < (3, 11):
    print("SKIP: 07_exception_group needs Python 3.11+ (asyncio.TaskGroup, except*)")
    raise SystemExit(0)

from _exception_group import main

asyncio.run(main())
