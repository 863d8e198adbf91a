//! Integration tests: the `spineagent` binary against real peers (DCMTK)
//! and real MR files. One test binary, modules by topic.

mod analysis;
mod assembly;
mod delivery;
mod durability;
mod malformed;
mod operations;
mod peers;
mod phantom;
mod report_agent;
mod transfer_syntaxes;
