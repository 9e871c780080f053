"""What ``connmon report`` says of the October history of :func:`tests.factories.october_rows`, worked out by hand."""

GOLDEN_CSV = """\
site,kind,district,link,target_mbps,cycles,cycles_up,availability_percent,rtt_median_ms,rtt_p95_ms,echoes,replies,\
loss_percent,tests,tests_failed,tests_met,download_median_mbps,download_min_mbps,met_percent,verdict
s3,school,Khromtau,fibre,4,0,0,,,,0,0,,2,1,0,1.500,1.000,0.00,never
s2,school,Aktobe,fibre,4,4,2,50.0000,5.000,5.000,8,4,50.0000,2,0,1,4.000,3.000,50.00,partly
c1,clinic,Khromtau,fibre,2,1,1,100.0000,650.000,700.000,2,2,0.0000,0,0,0,,,,untested
s1,school,Aktobe,fibre,4,10,10,100.0000,20.000,30.000,40,30,25.0000,3,0,3,6.000,5.000,100.00,met
"""

DISTRICT_SENTENCES = {
    ("clinic", "Khromtau"): "0 of 1 clinic in Khromtau met 2 Mbit/s in every test; 0 never did; 1 was not tested. "
                            "Up 100.00% of cycles.",
    ("school", "Aktobe"): "1 of 2 schools in Aktobe met 4 Mbit/s in every test; 0 never did; 1 did in some tests. "
                          "Up 85.71% of cycles.",  # s1 10 of 10 cycles, s2 2 of 4
    ("school", "Khromtau"): "0 of 1 school in Khromtau met 4 Mbit/s in every test; 1 never did.",  # s3: no cycle
}
