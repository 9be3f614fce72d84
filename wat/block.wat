;; block.wat: waits an hour inside one host call, then exits.
;;
;; What it does: one poll_oneoff on a relative monotonic-clock subscription of
;; 3600 s. The guest runs no wasm while it waits, so epoch interruption cannot
;; reach it: only the host's own timer can stop it at its deadline.
;;
;; What it is for: the deadline test for a guest blocked in a host call.
(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 1)

  ;; subscription (48 bytes) @0: userdata u64 @0, tag u8 @8 (0 = clock),
  ;; clock id u32 @16 (1 = monotonic), timeout u64 @24, precision u64 @32,
  ;; flags u16 @40 (0 = relative); event (32 bytes) @64; nevents @128.
  (func (export "_start")
    (i32.store8 offset=8 (i32.const 0) (i32.const 0))
    (i32.store offset=16 (i32.const 0) (i32.const 1))
    (i64.store offset=24 (i32.const 0) (i64.const 3600000000000))
    (drop (call $poll_oneoff (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))))
