//! The built-in default: a lab with two namespaces, an image, an export through the XDP
//! program and AF_XDP sockets, and the userspace initiator discovering and verifying it.

use anyhow::{bail, Result};
use aoe_integration::Lab;

pub fn run() -> Result<()> {
    let lab = Lab::new()?;
    println!(
        "demo: target namespace {} ({}), initiator namespace {} ({}), veth MTU 1500",
        lab.target_ns, lab.target_if, lab.initiator_ns, lab.initiator_if
    );
    let image = lab.image("disk.img", 64 << 20)?;
    let (target, _peer) = lab.start_target(&image, &[])?;
    println!(
        "demo: $ aoe-ctl export --shelf 1 --slot 2 --iface {} {}",
        lab.target_if,
        image.display()
    );
    println!("{}", target.first_line);

    println!("demo: $ aoe-ctl discover --iface {}", lab.initiator_if);
    let d = lab.discover(&[])?;
    print!("{}", String::from_utf8_lossy(&d.stdout));
    eprint!("{}", String::from_utf8_lossy(&d.stderr));

    println!(
        "demo: $ aoe-ctl verify --iface {} --target e1.2 --bytes 16M",
        lab.initiator_if
    );
    let v = lab.verify("16M", &[])?;
    print!("{}", String::from_utf8_lossy(&v.stdout));
    eprint!("{}", String::from_utf8_lossy(&v.stderr));

    let log = target.stop()?;
    eprint!("{log}");
    if !d.status.success() || !String::from_utf8_lossy(&d.stdout).contains("e1.2") {
        bail!("discover did not find e1.2");
    }
    if !v.status.success() {
        bail!("verify failed");
    }
    println!("demo: OK (the lab is removed)");
    Ok(())
}
