FROM alpine
ENV A=1
ENV B="two words" C='three $x' D=a\ b
ENV OLD style value here
ENV E=
ENV F=${A:-x}
