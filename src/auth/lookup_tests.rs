use std::time::Duration;

use tokio::time::Instant;

use super::*;

#[test]
fn the_rate_limit_lets_a_burst_through_then_spaces_starts() {
    let mut rate = RateLimit::new(4);
    let now = Instant::now();
    let far = now + Duration::from_secs(60);
    let starts: Vec<Duration> = (0..7).map(|_| rate.reserve(now, far).expect("before the deadline") - now).collect();
    let ms = Duration::from_millis;
    assert_eq!(starts, [ms(0), ms(0), ms(0), ms(0), ms(250), ms(500), ms(750)]);
}

#[test]
fn a_start_after_the_deadline_is_refused_and_reserves_nothing() {
    let mut rate = RateLimit::new(2);
    let now = Instant::now();
    let soon = now + Duration::from_millis(100);
    assert_eq!(rate.reserve(now, soon), Some(now));
    assert_eq!(rate.reserve(now, soon), Some(now));
    assert_eq!(rate.reserve(now, soon), None, "the third would start at 500ms");
    assert_eq!(rate.reserve(now, now + Duration::from_secs(1)), Some(now + Duration::from_millis(500)));
}

#[test]
fn the_rate_limit_refills_while_idle() {
    let mut rate = RateLimit::new(2);
    let now = Instant::now();
    let far = now + Duration::from_secs(60);
    for _ in 0..2 {
        rate.reserve(now, far);
    }
    let later = now + Duration::from_secs(5);
    assert_eq!(rate.reserve(later, far), Some(later));
    assert_eq!(rate.reserve(later, far), Some(later), "a whole burst again");
}

fn fetched(found: bool, at: Instant) -> Arc<Slot> {
    let slot = Slot::default();
    let user = found.then(|| Arc::new(crate::auth::looked_up_user("u", "secret", AuthType::ScramSha256).unwrap()));
    slot.fetched.set(Fetched { at, user, passwd: None }).unwrap();
    Arc::new(slot)
}

#[test]
fn making_room_drops_expired_names_then_unknown_ones() {
    let now = Instant::now();
    let ttl = Duration::from_secs(60);
    let mut cache = HashMap::default();
    cache.insert("old".to_owned(), fetched(true, now - Duration::from_secs(61)));
    cache.insert("known".to_owned(), fetched(true, now));
    cache.insert("unknown".to_owned(), fetched(false, now));
    cache.insert("in-flight".to_owned(), Arc::new(Slot::default()));
    make_room(&mut cache, now, ttl, 4);
    let mut names: Vec<&str> = cache.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["in-flight", "known", "unknown"], "room enough once the expired one went");
    make_room(&mut cache, now, ttl, 3);
    let mut names: Vec<&str> = cache.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["in-flight", "known"]);
}
