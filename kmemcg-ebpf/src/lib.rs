#![no_std]
// The programs live in main.rs; this empty library lets kmemcg-agent depend on the crate so
// that cargo rebuilds the agent when they change.
