;; exit7.wat: a guest that exits with code 7.
;;
;; What it does: writes one progress event,
;;
;;     {"type":"progress","message":"exiting"}
;;
;; then calls proc_exit(7). It never reads its dispatch.
;;
;; What it is for: checking that a non-zero exit code fails the dispatch with
;; "guest exited with code 7" and that the output written before it is kept.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param $fd i32) (param $iovs i32) (param $iovs_len i32) (param $nwritten i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param $code i32)))

  (memory (export "memory") 1)

  (global $IOV i32 (i32.const 0))   ;; one iovec {buf, len}
  (global $NUM i32 (i32.const 8))   ;; nwritten out-parameter

  (global $S_LINE i32 (i32.const 64))
  (global $S_LINE_LEN i32 (i32.const 40))
  (data (i32.const 64) "{\"type\":\"progress\",\"message\":\"exiting\"}\n")

  ;; Write all `len` bytes at `ptr` to `fd`; returns 0 or the WASI errno.
  (func $write_all (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
    (local $err i32)
    (block $done
      (loop $more
        (br_if $done (i32.eqz (local.get $len)))
        (i32.store (global.get $IOV) (local.get $ptr))
        (i32.store offset=4 (global.get $IOV) (local.get $len))
        (local.set $err
          (call $fd_write (local.get $fd) (global.get $IOV) (i32.const 1) (global.get $NUM)))
        (if (local.get $err) (then (return (local.get $err))))
        (if (i32.eqz (i32.load (global.get $NUM))) (then (return (i32.const 29))))
        (local.set $ptr (i32.add (local.get $ptr) (i32.load (global.get $NUM))))
        (local.set $len (i32.sub (local.get $len) (i32.load (global.get $NUM))))
        (br $more)))
    (i32.const 0))

  (func $main (export "_start")
    (drop (call $write_all (i32.const 1) (global.get $S_LINE) (global.get $S_LINE_LEN)))
    (call $proc_exit (i32.const 7)))
)
