;; flood.wat: a guest that writes to stdout without end.
;;
;; What it does: fills a 64 KiB buffer (65535 'x' then a newline) and writes it
;; to stdout in an endless loop of fd_write. As soon as fd_write returns an
;; error errno it exits with proc_exit(3). It never reads its dispatch.
;;
;; What it is for: checking the stdout cap ("stdout exceeded its cap of N
;; bytes", the first N bytes kept) and that a guest flooding its output is
;; stopped, whether the host refuses the write (exit 3 here) or traps it.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param $fd i32) (param $iovs i32) (param $iovs_len i32) (param $nwritten i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param $code i32)))

  ;; page 0 holds the iovec, page 1 the 64 KiB buffer
  (memory (export "memory") 2)

  (global $IOV i32 (i32.const 0))          ;; one iovec {buf, len}
  (global $NUM i32 (i32.const 8))          ;; nwritten out-parameter
  (global $BUF i32 (i32.const 0x10000))
  (global $BUF_LEN i32 (i32.const 0x10000))

  (func $main (export "_start")
    ;; 64 KiB of 'x', the last byte a newline so the output is lines
    (memory.fill (global.get $BUF) (i32.const 0x78) (global.get $BUF_LEN))
    (i32.store8 (i32.add (global.get $BUF) (i32.sub (global.get $BUF_LEN) (i32.const 1)))
                (i32.const 0x0a))
    (i32.store (global.get $IOV) (global.get $BUF))
    (i32.store offset=4 (global.get $IOV) (global.get $BUF_LEN))
    (loop $forever
      (if (call $fd_write (i32.const 1) (global.get $IOV) (i32.const 1) (global.get $NUM))
        (then (call $proc_exit (i32.const 3))))
      (br $forever)))
)
