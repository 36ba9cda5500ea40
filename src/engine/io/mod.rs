//! Placeholder: the I/O backends (epoll, io_uring) land here.
