# Stage 2 for PSPNet, calibration: from the source-trained start, train only conv_seg on the target task.
#   python tools/train.py THIS_CONFIG --cfg-options load_from=<stage 1 checkpoint>
_base_ = ['./pspnet_mv2-d8_1xb8-100it_vocfinetune-128x128.py', '../_base_/calibrate_conv_seg.py']
optim_wrapper = dict(optimizer=dict(lr=0.1))
