"""A "node" module that dies of SIGSEGV while it is imported, before any runtime code runs
(a native fault in an extension module's import). For the supervisor's tests; not a test."""

import faulthandler

faulthandler._sigsegv()
